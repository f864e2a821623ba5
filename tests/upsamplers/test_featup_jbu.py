"""FeatUp JBU stack: exactness against FeatUp's own outputs and the straightforward
evaluation, tiling, kernel reuse, and the pipeline end to end (checkpoint files, the
registry factory and the published-checkpoint cache: test_featup_jbu_checkpoints.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_featup as nf
from napari_featup.upsamplers import channel_norm
from napari_featup.upsamplers import featup_jbu as J


def _fixtures_root() -> Path:
    env = os.environ.get("NAPARI_FEATUP_FIXTURES")
    if env:
        return Path(env)
    # the repository sits beside shared/ (in the workspace and in CI's clone)
    return Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


FIXTURES = _fixtures_root() / "featup-jbu"
needs_fixtures = pytest.mark.skipif(
    not (FIXTURES / "cases.json").is_file(),
    reason=f"FeatUp JBU fixtures not found at {FIXTURES} (set NAPARI_FEATUP_FIXTURES)",
)


def _cases() -> list[dict]:
    if not (FIXTURES / "cases.json").is_file():
        return []
    return json.loads((FIXTURES / "cases.json").read_text())


def _case(name: str):
    z = np.load(FIXTURES / f"{name}.npz")
    return (
        torch.from_numpy(z["feats"]),
        torch.from_numpy(z["image"]),
        torch.from_numpy(z["expected"]),
    )


def _random_stack(dim: int = 8, seed: int = 1, scale: float = 0.3) -> J.FeatUpJBU:
    """A small stack with non-trivial weights (sharp range kernels, real fixups)."""
    up = J.FeatUpJBU(dim).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in up.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return up


# ----------------------------------------------------------------------------- exactness


@needs_fixtures
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_reproduces_featup_fixtures(case):
    up = nf.load_featup_checkpoint(FIXTURES / f"{case['name']}.ckpt")
    assert not up.training and up.dim == case["dim"]
    feats, image, expected = _case(case["name"])
    assert list(feats.shape[-2:]) == case["grid"] and list(image.shape[-2:]) == case["image"]
    with torch.no_grad():
        out = up(feats, image)
    assert list(out.shape) == case["output"]
    assert up.native_size(tuple(case["grid"]), tuple(case["image"])) == tuple(case["output"][-2:])
    err = (out - expected).abs().max().item()
    assert err < 1e-4, f"{case['name']}: max abs error {err:.2e}"


@pytest.mark.parametrize("grid,image", [((3, 5), (48, 80)), ((4, 2), (56, 28)), ((2, 3), (30, 44))])
def test_matches_straightforward_evaluation_non_square(grid, image):
    up = _random_stack()
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(1, up.dim, *grid, generator=g)
    img = torch.randn(1, 3, *image, generator=g)
    with torch.no_grad():
        ref = J.reference_forward(up, feats, img)
        out = up(feats, img)
    assert out.shape == (1, up.dim, 16 * grid[0], 16 * grid[1])
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("grid", [(1, 1), (1, 5), (5, 1), (2, 3), (1, 2)])
def test_tiny_grids_do_not_crash(grid):
    # FeatUp's reflect pad of 3 fails on the 2-wide guidance of a 1-wide grid; ours
    # keeps reflecting (numpy's "reflect"), which equals torch's where torch works
    up = _random_stack()
    feats = torch.randn(1, up.dim, *grid)
    img = torch.randn(1, 3, 14 * grid[0], 14 * grid[1])
    with torch.no_grad():
        out = up(feats, img)
        ref = J.reference_forward(up, feats, img)
        hr = up.upsample(feats, img)
    assert out.shape[-2:] == (16 * grid[0], 16 * grid[1]) and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() < 1e-5 * max(1.0, ref.abs().max().item())
    assert hr.shape[-2:] == img.shape[-2:]


def test_reflect_index_equals_torch_reflect_and_extends_it():
    for n in (4, 5, 9):
        x = torch.arange(float(n)).view(1, 1, n)
        ours = x[..., J.reflect_index(torch.arange(-3, n + 3), n)]
        assert torch.equal(ours, F.pad(x, (3, 3), mode="reflect"))
    assert J.reflect_index(torch.arange(-3, 5), 2).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert J.reflect_index(torch.arange(-2, 3), 1).tolist() == [0] * 5


@pytest.mark.parametrize(
    "size,out", [((56, 70), (64, 80)), ((64, 96), (8, 12)), ((30, 17), (7, 40))]
)
def test_guidance_pooling_equals_adaptive_avg_pool(size, out):
    x = torch.randn(1, 3, *size)
    rows, cols = torch.arange(out[0]), torch.arange(out[1])
    ours = J._pool_axis(J._pool_axis(x, 2, out[0], rows), 3, out[1], cols)
    assert torch.allclose(ours, F.adaptive_avg_pool2d(x, out), atol=1e-6)


def test_bicubic_taps_equal_interpolate():
    n_in, n_out = 6, 12
    src, w = J._bicubic_taps(n_out, n_in, torch.arange(n_out))
    dense = torch.zeros(n_out, n_in, dtype=torch.float64).scatter_add_(1, src, w)
    eye = torch.eye(n_in)[None, None]
    ref = F.interpolate(eye, (n_out, n_in), mode="bicubic", align_corners=False)[0, 0]
    assert torch.allclose(dense.float(), ref, atol=1e-6)


def test_batch_equals_per_image():
    up = _random_stack()
    feats, img = torch.randn(2, up.dim, 3, 4), torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        both = up(feats, img)
        single = torch.cat([up(feats[i : i + 1], img[i : i + 1]) for i in range(2)])
    assert torch.allclose(both, single, atol=1e-5)


# ----------------------------------------------------------------------------- tiling and kernels


@needs_fixtures
@pytest.mark.parametrize("cache", [True, False])
def test_tiled_equals_untiled(cache):
    up = nf.load_featup_checkpoint(FIXTURES / "dinov2.ckpt")
    feats, image, _ = _case("dinov2")  # 56 px image, 64 px native: includes the resize
    with torch.no_grad():
        full = up.kernels(image, (4, 4), cache=True)(feats)
        kern = up.kernels(image, (4, 4), cache=cache)
        for step in (7, 13):
            tiles = torch.cat([kern(feats, slice(r, r + step)) for r in range(0, 56, step)], 2)
            assert tiles.shape == full.shape == (1, 384, 56, 56)
            assert (tiles - full).abs().max().item() <= 1e-5
        for r in (0, 1, 2, 27, 53, 54, 55):  # single rows: the halo at both borders
            assert (kern(feats, slice(r, r + 1)) - full[:, :, r : r + 1]).abs().max().item() <= 1e-5
        # and the whole-image path agrees with FeatUp's 16x output resized
        native = up(feats, image)
    resized = F.interpolate(native, (56, 56), mode="bilinear", align_corners=False)
    assert (full - resized).abs().max().item() < 1e-5


def test_tiled_rows_on_larger_non_square_image():
    up = _random_stack(dim=4)
    feats, img = torch.randn(1, 4, 9, 5), torch.randn(1, 3, 126, 70)  # 144 x 80 native
    with torch.no_grad():
        kern = up.kernels(img, (9, 5), cache=False)
        full = up.kernels(img, (9, 5))(feats)
        tiles = torch.cat([kern(feats, slice(r, r + 11)) for r in range(0, 126, 11)], 2)
    assert (tiles - full).abs().max().item() <= 1e-5 * max(1.0, full.abs().max().item())


@needs_fixtures
def test_kernel_reuse_project_equals_upsample_then_project():
    up = nf.load_featup_checkpoint(FIXTURES / "dino16.ckpt")
    feats, image, expected = _case("dino16")
    g = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(3, 384, generator=g) / 20, torch.randn(3, generator=g)
    with torch.no_grad():
        kern = up.kernels(image, (4, 6))  # computed once, reused below
        high = kern(feats)
        proj = kern.project(feats, weight, bias)
        proj_rows = kern.project(feats, weight, bias, rows=slice(10, 30))
        other = kern(feats * 2 + 1)  # another channel set through the same kernels
        direct_other = up(feats * 2 + 1, image)
    assert (high - expected).abs().max().item() < 1e-4  # 64 x 96 image: native size
    ref = torch.einsum("kc,bchw->bkhw", weight, high) + bias[:, None, None]
    assert (proj - ref).abs().max().item() < 1e-4
    assert (proj_rows - ref[:, :, 10:30]).abs().max().item() < 1e-4
    assert (other - direct_other).abs().max().item() < 1e-4
    a, b = kern.affine
    assert a.shape == (384, 384) and b.shape == (384,)
    w = up.fixup_proj[1].weight[:, :, 0, 0]
    assert torch.allclose(a, torch.eye(384) + 0.1 * w) and torch.allclose(
        b, 0.1 * up.fixup_proj[1].bias
    )


# ----------------------------------------------------------------------------- pipeline


@needs_fixtures
@pytest.mark.parametrize("use_norm", [True, False])
def test_pipeline_end_to_end(use_norm):
    rng = np.random.default_rng(0)
    img = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    res = nf.extract_features(
        img,
        "dinov2",
        "featup-jbu",
        weights="random",
        device="cpu",
        use_norm=use_norm,
        upsampler_weights=FIXTURES / "dinov2.ckpt",
    )
    md = res.metadata
    assert res.lowres.shape == (384, 4, 5) and res.highres.shape == (384, 50, 70)
    assert md["upsampler"] == "featup-jbu" and md["upsampler_native_size"] == [64, 80]
    assert md["use_norm"] is use_norm
    assert "64 x 80" in md["highres"] and "resized" in md["highres"] and "50 x 70" in md["highres"]
    if use_norm:  # FeatUp's channel LayerNorm, no affine, on the backbone grid
        assert np.abs(res.lowres.mean(0)).max() < 1e-4
        assert np.abs(res.lowres.var(0) - 1).max() < 1e-3
    assert np.isfinite(res.highres).all()
    # the field's cheap projection (kernels reused) equals projecting the full features
    w = rng.standard_normal((2, 384)).astype(np.float32) / 20
    direct = np.einsum("kc,chw->khw", w, res.highres)
    assert np.abs(res.field.project(w) - direct).max() < 1e-4
    # and the pipeline output is the stack's output resized to the padded image, cropped
    up = nf.load_featup_checkpoint(FIXTURES / "dinov2.ckpt")
    padded = res.field.image
    with torch.no_grad():
        native = up(torch.from_numpy(res.lowres)[None], padded)
    expect = F.interpolate(native, padded.shape[-2:], mode="bilinear", align_corners=False)
    assert np.abs(expect[0, :, :50, :70].numpy() - res.highres).max() < 1e-4


def test_channel_norm_matches_featup_use_norm():
    x = torch.randn(1, 6, 3, 4) * 3 + 1
    y = channel_norm(x)
    assert torch.allclose(y.mean(1), torch.zeros(1, 3, 4), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(1, 3, 4), atol=1e-3)


def test_pipeline_use_norm_normalises_features():
    # random resnet50 features are not normalised per pixel, so the norm is visible
    img = (np.random.default_rng(1).random((64, 96)) * 255).astype(np.uint8)
    kw = dict(weights="random", upsampler_weights="random", device="cpu", highres=False)
    on = nf.extract_features(img, "resnet50", "featup-jbu", use_norm=True, **kw)
    off = nf.extract_features(img, "resnet50", "featup-jbu", use_norm=False, **kw)
    assert on.metadata["use_norm"] is True and off.metadata["use_norm"] is False
    assert np.abs(on.lowres.mean(0)).max() < 1e-4  # (the variance is 1 up to the LayerNorm eps)
    not_normed = np.abs(off.lowres.mean(0)).max() + np.abs(off.lowres.var(0) - 1).max()
    assert not_normed > 1e-2
    ref = channel_norm(torch.from_numpy(off.lowres)[None])[0].numpy()
    assert np.abs(ref - on.lowres).max() < 1e-4
    assert on.field.project(np.ones((1, 2048), np.float32)).shape == (1, 64, 96)


@needs_fixtures
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_float32_and_half_match_fixture():
    up = nf.load_featup_checkpoint(FIXTURES / "dino16.ckpt", device="cuda")
    feats, image, expected = _case("dino16")
    with torch.no_grad():
        out32 = up(feats.cuda(), image.cuda()).cpu()
        out16 = up(feats.cuda().half(), image.cuda()).float().cpu()
    assert (out32 - expected).abs().max().item() < 1e-4
    assert (out16 - expected).abs().max().item() < 2e-2 * expected.abs().max().item()


def test_kernels_made_in_inference_mode_work_outside_it():
    up = _random_stack()
    feats, img = torch.randn(1, up.dim, 3, 3), torch.randn(1, 3, 42, 42)
    with torch.inference_mode():
        kern = up.kernels(img, (3, 3))
        a = kern(feats)
    with torch.no_grad():
        b = kern(feats)
    c = kern(feats, rows=slice(0, 5))
    assert torch.equal(a, b) and torch.equal(a[:, :, :5], c)
