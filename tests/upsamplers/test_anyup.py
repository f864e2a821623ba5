"""AnyUp: the upstream fixture, exact tiling, kernel reuse, checkpoints, precision."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.errors import UpsamplerError, WeightsFileError, WeightsUnavailableError
from napari_featup.field import FeatureField
from napari_featup.upsamplers import upsampler_info
from napari_featup.upsamplers.anyup import RELEASES
from napari_featup.upsamplers.anyup.window import window_bounds
from napari_featup.upsamplers.jafar import jafar_release

CASE = "anyup_384_16x16_224"


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    d = fixtures_dir / "anyup-jafar"
    if not (d / "anyup_seed1001.pth").is_file():
        pytest.skip("AnyUp fixtures missing")
    return d


@pytest.fixture(scope="module")
def case(fx):
    return dict(np.load(fx / f"{CASE}.npz"))


def check_case(out: torch.Tensor, z: dict) -> float:
    o = out.double().numpy()[0]
    y, x = z["pix_yx"].T
    errs = [
        abs(o[:, y, x] - z["expected_pix"]).max(),
        abs(o[z["map_channels"]] - z["expected_maps"]).max(),
        abs(np.tensordot(z["proj_weights"], o, axes=(1, 0)) - z["expected_proj"]).max(),
        abs(o.mean((1, 2)) - z["expected_chan_mean"]).max(),
    ]
    return float(max(errs))


@pytest.mark.parametrize("name", ["anyup", "anyup-multi"])
def test_fixture_matches_upstream(fx, case, name):
    up = nf.load_upsampler(name, weights=fx / "anyup_seed1001.pth", device="cpu")
    with torch.no_grad():
        out = up(torch.from_numpy(case["feats"]), torch.from_numpy(case["image"]))
    assert out.shape == (1, 384, 224, 224)
    assert check_case(out, case) <= 1e-4


def random_up(**options) -> torch.nn.Module:
    return nf.load_upsampler("anyup", weights="random", device="cpu", **options)


def inputs(c=32, grid=(5, 7), size=(70, 97), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, c, *grid, generator=g), torch.randn(1, 3, *size, generator=g)


def test_random_weights_run_and_are_flagged():
    up = random_up()
    feats, image = inputs()
    out = up(feats, image)
    assert out.shape == (1, 32, 70, 97) and torch.isfinite(out).all()
    meta = up.extra_metadata()
    assert meta["random_weights"] and "untrained" in meta["weights"]
    # seeded: the same weights every time, without disturbing the global RNG
    state = torch.random.get_rng_state()
    again = random_up()
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(again(feats, image), out)


def test_output_is_convex_combination_in_window():
    """Each output pixel mixes only the feature vectors of its window: one-hot
    features show where the weight goes."""
    up = random_up()
    h, w = 6, 8
    feats = torch.eye(h * w).view(h * w, h, w)[None]  # channel k = indicator of cell k
    image = torch.randn(1, 3, 60, 75)
    out = up(feats, image)[0].view(h, w, 60, 75)
    assert torch.allclose(out.sum((0, 1)), torch.ones(60, 75), atol=1e-5)
    assert out.min() >= 0
    rlo, rhi = window_bounds(60, h, 0.1)
    clo, chi = window_bounds(75, w, 0.1)
    for r, c in [(0, 0), (31, 40), (59, 74), (12, 3)]:
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[rlo[r] : rhi[r], clo[c] : chi[c]] = True
        assert out[..., r, c][~mask].abs().max() == 0
        assert out[..., r, c][mask].min() > 0


@pytest.mark.parametrize("swept", [False, True])
def test_tiled_equals_untiled(swept):
    up = random_up()
    feats, image = inputs()
    full = up(feats, image)
    if swept:  # force the memory-bounded encoder (one sweep per GroupNorm level)
        up.memory_mb = 0
    bands = [slice(0, 1), slice(1, 23), slice(23, 24), slice(24, 69), slice(69, 70)]
    tiled = torch.cat([up.upsample(feats, image, rows=r) for r in bands], dim=2)
    assert (tiled - full).abs().max() <= 1e-5
    prep = up._cache[3][0] if up._cache else None
    if swept and prep is not None:
        assert not prep.enc.kept and prep.enc.sweeps > 1


def test_swept_statistics_equal_kept():
    up = random_up()
    feats, image = inputs(size=(40, 33), grid=(3, 3))
    kept = up.prepare(feats[0], image[0])
    up.memory_mb = 0
    swept = up.prepare(feats[0], image[0])
    assert kept.enc.kept and not swept.enc.kept
    for name, (m, r) in kept.enc.stats._known.items():
        m2, r2 = swept.enc.stats._known[name]
        assert torch.allclose(m, m2, atol=1e-7) and torch.allclose(r, r2, rtol=1e-6)
    assert torch.allclose(kept.keys, swept.keys, atol=1e-6)


def test_kernel_reuse_equals_full_computation():
    up = random_up()
    feats, image = inputs()
    full = up(feats, image)
    k = up.content_kernels(feats, image)
    assert k is not None
    assert (k(feats) - full).abs().max() <= 1e-5
    assert (k(feats, rows=slice(30, 41)) - full[:, :, 30:41]).abs().max() <= 1e-5
    wgt = torch.randn(3, feats.shape[1])
    proj = torch.einsum("kc,bchw->bkhw", wgt, full)
    assert (k.project(feats, wgt) - proj).abs().max() <= 1e-4


def test_kernels_in_half_precision_when_float32_does_not_fit():
    up = random_up()
    feats, image = inputs()
    full = up(feats, image)
    n = up.kernel_entries(tuple(image.shape[-2:]), tuple(feats.shape[-2:]))
    k = up.content_kernels(feats, image, max_bytes=3 * n)  # room for 2 bytes a weight
    assert k.store == torch.bfloat16
    assert all(g.dtype == torch.bfloat16 for g in k.groups.values())
    out = k(feats)
    assert out.dtype == torch.float32
    assert (out - full).abs().max() <= 2e-2 * full.abs().max()
    assert up.content_kernels(feats, image, max_bytes=n) is None


def test_feature_field_projects_through_kernels():
    up = random_up()
    feats, image = inputs(size=(56, 64), grid=(4, 4))
    field = FeatureField(feats, image, up, (50, 60))
    assert field.linear
    full = up(feats, image)[0, :, :50, :60]
    assert np.abs(field.norms() - full.norm(dim=0).numpy()).max() < 1e-4
    sim = field.similarity([(20, 30)])
    q = full[:, 20, 30] / full[:, 20, 30].norm()
    ref = torch.einsum("c,chw->hw", q, full) / full.norm(dim=0)
    assert np.abs(sim - ref.numpy()).max() < 1e-4
    # over budget: the field falls back to the dense store, same answers
    dense = FeatureField(feats, image, up, (50, 60), kernel_budget_bytes=0)
    assert not dense.linear
    assert np.abs(dense.similarity([(20, 30)]) - sim).max() < 1e-4


def test_batch_items_are_independent():
    up = random_up()
    f1, i1 = inputs(c=8, grid=(3, 4), size=(30, 41), seed=1)
    f2, i2 = inputs(c=8, grid=(3, 4), size=(30, 41), seed=2)
    both = up(torch.cat([f1, f2]), torch.cat([i1, i2]))
    assert (both[:1] - up(f1, i1)).abs().max() <= 1e-6
    assert (both[1:] - up(f2, i2)).abs().max() <= 1e-6


def test_non_square_and_uneven_sizes():
    up = random_up()
    for size, grid in [((45, 120), (3, 9)), ((121, 37), (10, 2)), ((17, 19), (2, 2))]:
        feats, image = inputs(c=8, grid=grid, size=size)
        out = up(feats, image)
        assert out.shape == (1, 8, *size) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    up = random_up()
    feats, image = inputs(c=16, size=(30, 41), grid=(3, 4))
    ref = up(feats, image)
    try:
        out = up(feats.to(dtype), image.to(dtype))
    except RuntimeError as exc:  # an op this torch build lacks in this dtype on CPU
        pytest.skip(f"{dtype} unsupported here: {exc}")
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() <= 0.1 * ref.abs().max()


def test_checkpoint_errors(fx, tmp_path):
    with pytest.raises(WeightsUnavailableError):
        nf.load_upsampler("anyup", weights=tmp_path / "missing.pth", device="cpu")
    # wrong keys: a JAFAR checkpoint
    with pytest.raises(WeightsFileError, match="not a checkpoint of anyup"):
        nf.load_upsampler("anyup", weights=fx / "jafar_384_seed2001.pth", device="cpu")
    # truncated
    data = (fx / "anyup_seed1001.pth").read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError):
        nf.load_upsampler("anyup", weights=cut, device="cpu")
    # wrong shape
    sd = torch.load(fx / "anyup_seed1001.pth", weights_only=True)
    sd["rope.freqs"] = torch.zeros(2, 64)
    bad = tmp_path / "shape.pth"
    torch.save(sd, bad)
    with pytest.raises(WeightsFileError, match="rope.freqs"):
        nf.load_upsampler("anyup", weights=bad, device="cpu")
    with pytest.raises(UpsamplerError):
        nf.load_upsampler("anyup", weights=3, device="cpu")


def test_release_download_offline_and_cache(fx, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        nf.load_upsampler("anyup", device="cpu")
    msg = str(err.value)
    assert RELEASES["anyup"] in msg and "napari-featup download" in msg
    assert str(tmp_path / "anyup" / "anyup_paper.pth") in msg
    # a file in the cache is used as is, offline
    (tmp_path / "anyup").mkdir(exist_ok=True)
    (tmp_path / "anyup" / "anyup_paper.pth").write_bytes((fx / "anyup_seed1001.pth").read_bytes())
    up = nf.load_upsampler("anyup", device="cpu")
    assert up.release == "anyup" and up.extra_metadata()["random_weights"] is False


def test_registry_entry():
    info = upsampler_info("anyup")
    assert info.licence == "CC-BY-4.0" and "ICLR 2026" in info.citation and info.takes_weights
    cls = info.cls
    assert not cls.linear and cls.tileable and not cls.fits_per_image and cls.content_linear
    assert nf.list_upsamplers().index("anyup") > nf.list_upsamplers().index("bilinear")


def test_bad_inputs():
    up = random_up()
    with pytest.raises(UpsamplerError):
        up(torch.randn(1, 8, 1, 5), torch.randn(1, 3, 20, 20))
    with pytest.raises(UpsamplerError):
        up(torch.randn(1, 8, 4, 4), torch.randn(1, 1, 20, 20))


def test_cli_list_shows_licence_and_citation(capsys):
    from napari_featup.cli import main

    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "anyup" in text and "CC-BY-4.0" in text and "Apache-2.0" in text
    assert "arXiv:2510.12764" in text and "arXiv:2506.11136" in text


def test_cli_extract_with_anyup(tmp_path, rgb_image):
    import tifffile

    from napari_featup.cli import main

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, rgb_image)
    out = tmp_path / "feats.npz"
    args = ["extract", str(img), "--backbone", "dinov2", "--weights", "random"]
    args += ["--upsampler", "anyup", "--upsampler-weights", "random", "--out", str(out), "-q"]
    assert main(args) == 0
    z = np.load(out, allow_pickle=False)
    assert any(v.shape[-2:] == rgb_image.shape[:2] for v in z.values() if v.ndim == 3)


@pytest.mark.parametrize("backbone", nf.list_backbones())
def test_every_backbone_has_anyup_and_jafar_where_published(backbone):
    """AnyUp takes every registered backbone's channel count; JAFAR loads for those
    with a published checkpoint of the same width and says so for the others."""
    from napari_featup.backbones import get_spec
    from napari_featup.upsamplers.jafar import JAFAR

    dim = get_spec(backbone).dim
    g = torch.Generator().manual_seed(0)
    feats, image = torch.randn(1, dim, 3, 4, generator=g), torch.randn(1, 3, 21, 30, generator=g)
    up = nf.load_upsampler("anyup", backbone=backbone, weights="random", device="cpu")
    with torch.no_grad():
        out = up(feats, image)
    assert out.shape == (1, dim, 21, 30) and torch.isfinite(out).all()
    published = JAFAR.published_weights(backbone)
    if published is None:
        with pytest.raises(UpsamplerError, match="no published JAFAR checkpoint"):
            nf.load_upsampler("jafar", backbone=backbone, device="cpu")  # before any download
    else:
        assert jafar_release(backbone).dim == dim and published[1] == jafar_release(backbone).url
        up = nf.load_upsampler("jafar", backbone=backbone, weights="random", device="cpu")
        with torch.no_grad():
            assert up(feats, image).shape == (1, dim, 21, 30)


@pytest.mark.parametrize("name", ["anyup", "jafar"])
def test_cancel_stops_the_encoding_inside_its_step(fx, name):
    """A whole image's encoding is one step of a run: Cancel is answered inside it."""
    from napari_featup.progress import Cancelled, Progress, drive

    weights = fx / ("anyup_seed1001.pth" if name == "anyup" else "jafar_384_seed2001.pth")
    up = nf.load_upsampler(name, weights=weights, device="cpu")
    feats, image = inputs(c=384, grid=(8, 8), size=(128, 128))

    def one_step():
        yield Progress(0, 1, "upsampling")
        return up(feats, image)

    assert drive(one_step()).shape == (1, 384, 128, 128)
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) >= 3  # the first poll follows the event, the rest are inside

    with pytest.raises(Cancelled, match="inside a step"):
        drive(one_step(), should_cancel=should_cancel)
    assert len(polls) == 3
