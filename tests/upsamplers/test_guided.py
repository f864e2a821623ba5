"""Training-free guided upsamplers (jbu-classic, guided-fit) and the synthetic yardstick."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup import synthetic as syn
from napari_featup.upsamplers import load_upsampler
from napari_featup.upsamplers.guided.engine import GuidedKernels, guidance_colour

GUIDED = ["jbu-classic", "guided-fit"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: on a shared 2-core machine one intra-op thread is several
    times faster than two contending ones. Restored afterwards for other modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


FAST = {"jbu-classic": {}, "guided-fit": {"steps": 5}}


def _inputs(h=4, w=6, s=16, c=8, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, c, h, w, generator=g)
    # A piecewise image with an edge, so range weights matter.
    img = torch.rand(batch, 3, h * s, w * s, generator=g) * 0.2
    img[:, :, :, : w * s // 2 + 5] += 1.0
    return low, img


def _up(name, **opts):
    return load_upsampler(name, device="cpu", **{**FAST[name], **opts})


@pytest.mark.parametrize("name", GUIDED)
def test_registered_and_linear(name):
    assert name in nf.list_upsamplers()
    assert _up(name).linear


@pytest.mark.parametrize("name", GUIDED)
@pytest.mark.parametrize("size", [(64, 96), (60, 90)])
def test_shapes(name, size):
    low, img = _inputs(batch=2)
    img = img[..., : size[0], : size[1]]
    up = _up(name)
    with torch.inference_mode():
        out = up(low, img)
        rows = up.upsample(low, img, rows=slice(5, 17))
    assert out.shape == (2, 8) + size
    assert rows.shape == (2, 8, 12, size[1])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GUIDED)
@pytest.mark.parametrize("size", [(64, 96), (60, 90)])
@pytest.mark.parametrize("consistency", [0, 3])
def test_tiled_equals_untiled(name, size, consistency):
    low, img = _inputs()
    img = img[..., : size[0], : size[1]]
    up = _up(name, consistency=consistency)
    with torch.inference_mode():
        k = up.kernels(img, (4, 6))
        full = k.apply_linear(low)
        tiles = torch.cat(
            [k.apply_linear(low, slice(r, min(size[0], r + 7))) for r in range(0, size[0], 7)], 2
        )
        upsampled = up.upsample(low, img)
    assert torch.allclose(full, tiles, atol=1e-5)
    assert torch.allclose(full, upsampled, atol=1e-5)


def test_block_path_matches_streamed_path():
    low, img = _inputs()
    colour = guidance_colour(img)
    g = torch.Generator().manual_seed(1)
    maps = [torch.rand(1, 4, 6, generator=g) + 0.5 for _ in range(4)]
    maps[1] = maps[1] - 1.0  # b may be negative
    k = GuidedKernels(colour, (4, 6), *maps, radius=2)
    a = k._apply_blocks(low, 3, 50)
    b = k._apply_stream(low, 3, 50)
    assert torch.allclose(a, b, atol=1e-5)


def test_weight_cache_gives_the_same_result_and_is_reused():
    low, img = _inputs()
    colour = guidance_colour(img)
    k = GuidedKernels(colour, (4, 6), 1.0, 0.0, 1.0, 20.0, radius=2)
    k.max_tap_pixels = 25 * 16 * 96  # one cell row per chunk, so tiles span chunks
    fresh = GuidedKernels(colour, (4, 6), 1.0, 0.0, 1.0, 20.0, radius=2)
    fresh.cache_mb = 0
    fresh.max_tap_pixels = k.max_tap_pixels
    for rows in [slice(5, 6), slice(0, 64), slice(13, 40), slice(63, 64)]:
        a = k._apply_blocks(low, rows.start, rows.stop)
        assert torch.equal(a, fresh._apply_blocks(low, rows.start, rows.stop))
    assert len(k._wts_cache) == 4 and not fresh._wts_cache


@pytest.mark.parametrize("name", GUIDED)
def test_kernel_reuse_projection(name):
    low, img = _inputs()
    up = _up(name, consistency=2)
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    with torch.inference_mode():
        k = up.kernels(img, (4, 6))
        direct = torch.einsum("kc,bchw->bkhw", w, up.upsample(low, img)) + b[:, None, None]
        cheap = k.project(low, w, b)
    assert torch.allclose(direct, cheap, atol=1e-4)


@pytest.mark.parametrize("name", GUIDED)
def test_weights_are_a_partition_of_unity(name):
    """Constants stay constant (also through the back-projection), and the map is linear."""
    low, img = _inputs()
    up = _up(name, consistency=3)
    with torch.inference_mode():
        k = up.kernels(img, (4, 6))
        const = k(torch.full((1, 2, 4, 6), 2.5))
        x, y = low[:, :4], low[:, 4:]
        lin = k(2 * x - y)
        sep = 2 * k(x) - k(y)
    assert torch.allclose(const, torch.full_like(const, 2.5), atol=1e-4)
    assert torch.allclose(lin, sep, atol=1e-4)


def test_jbu_classic_respects_edges():
    """Across a colour edge, the bilateral weights keep each side's features apart."""
    low = torch.zeros(1, 1, 4, 6)
    low[..., 3:] = 1.0  # features follow the image's left/right halves
    img = torch.zeros(1, 3, 64, 96)
    img[..., 48:] = 1.0
    img = (img - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor(
        [0.229, 0.224, 0.225]
    )[:, None, None]
    jbu = _up("jbu-classic")
    bil = load_upsampler("bilinear")
    with torch.inference_mode():
        o_j, o_b = jbu(low, img)[0, 0], bil(low, img)[0, 0]
    # Pixels next to the edge: bilinear blurs them, the bilateral weights do not.
    assert float(o_b[:, 44:52].sub((torch.arange(96) >= 48).float()[44:52]).abs().max()) > 0.2
    assert float(o_j[:, 44:52].sub((torch.arange(96) >= 48).float()[44:52]).abs().max()) < 0.05


def test_iter_fit_progress_cancel_and_determinism():
    low, img = _inputs()
    up = _up("guided-fit", steps=6)
    it = up.iter_fit(low, img)
    first = [next(it) for _ in range(2)]
    it.close()  # cancel after two steps: nothing is kept
    assert [f[:2] for f in first] == [(1, 6), (2, 6)]
    assert "guided kernels" in first[0][2]
    assert up.fitted is None
    events = list(up.iter_fit(low, img))
    assert [e[0] for e in events] == list(range(1, 7)) and all(e[1] == 6 for e in events)
    p1 = up.fitted.raw.clone()
    again = _up("guided-fit", steps=6)
    list(again.iter_fit(low, img))
    assert torch.equal(p1, again.fitted.raw)
    other = _up("guided-fit", steps=6, seed=1)
    list(other.iter_fit(low, img))
    assert not torch.equal(p1, other.fitted.raw)
    # The fit moved away from the initial kernels.
    assert not torch.equal(p1, up._initial(1, (4, 6), "cpu"))


def test_guided_fit_refits_for_a_new_image():
    low, img = _inputs()
    up = _up("guided-fit", steps=3)
    with torch.inference_mode():
        up.upsample(low, img)  # fits on demand, even under inference_mode
    first = up.fitted
    assert first is not None and first.matches(guidance_colour(img), (4, 6))
    with torch.inference_mode():
        up.upsample(low, img)
    assert up.fitted is first  # same image: no refit
    _, img2 = _inputs(seed=5)
    with torch.inference_mode():
        up.upsample(low, img2)
    assert up.fitted is not first


@pytest.mark.parametrize(
    "name, opts, words",
    [
        ("jbu-classic", {"sigma_range": 0}, "sigma_range"),
        ("jbu-classic", {"sigma_spatial": -1.0}, "sigma_spatial"),
        ("jbu-classic", {"radius": 1.5}, "radius"),
        ("jbu-classic", {"sigma": 1.0}, "unknown option"),
        ("guided-fit", {"steps": -1}, "steps"),
        ("guided-fit", {"lr": float("nan")}, "lr"),
        ("guided-fit", {"samples": "many"}, "samples"),
        ("guided-fit", {"iterations": 5}, "unknown option"),
        ("jbu-classic", {"consistency": True}, "consistency"),
    ],
)
def test_bad_options(name, opts, words):
    with pytest.raises(ValueError, match=words):
        load_upsampler(name, **opts)


@pytest.mark.parametrize("name", GUIDED)
def test_no_weights_and_bad_guidance(name):
    with pytest.raises(ValueError, match="no weights"):
        load_upsampler(name, weights="x.ckpt")
    low, img = _inputs()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _up(name).upsample(low, img[:, :1])
    with pytest.raises(ValueError, match="does not fit"):
        _up(name).upsample(torch.zeros(1, 8, 100, 6), img)


@pytest.mark.parametrize("name", GUIDED)
def test_pipeline_end_to_end(name):
    rng = np.random.default_rng(0)
    image = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    events = []
    res = nf.extract_features(
        image,
        backbone="dino16",
        upsampler=name,
        weights="random",
        device="cpu",
        upsampler_options=FAST[name],
        progress=events.append,
    )
    assert res.highres.shape == (384, 40, 56)
    assert res.metadata["upsampler"] == name
    if name == "guided-fit":
        assert any("guided kernels" in e.message for e in events)
    w = np.random.default_rng(1).normal(size=(2, 384)).astype(np.float32)
    proj = res.field.project(w)
    assert np.allclose(proj, np.einsum("kc,chw->khw", w, res.highres), atol=1e-3)


def test_pipeline_cancel_during_fit():
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    up = _up("guided-fit", steps=50)
    seen = []

    def cancel():
        return bool(seen) and "guided kernels" in seen[-1].message

    with pytest.raises(nf.Cancelled):
        nf.extract_features(
            image,
            backbone="dino16",
            upsampler=up,
            weights="random",
            device="cpu",
            progress=seen.append,
            should_cancel=cancel,
        )
    assert up.fitted is None


def test_synthetic_scene_is_deterministic_and_checked():
    a = syn.make_scene(64, seed=3, dim=16)
    b = syn.make_scene(64, seed=3, dim=16)
    c = syn.make_scene(64, seed=4, dim=16)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lowres, b.lowres)
    assert not np.array_equal(a.image, c.image)
    assert a.lowres.shape == (16, 4, 4) and a.features.shape == (16, 64, 64)
    # The ground truth scores perfectly; the grid is F pooled over 16 px.
    s = syn.score(a.features, a)
    assert s["cos"] > 0.9999 and s["boundary_err"] < 1e-6 and s["lowres_err"] < 1e-6
    with pytest.raises(ValueError, match="multiple of stride"):
        syn.make_scene(70)


def test_small_benchmark_ordering():
    """Guided upsamplers beat bilinear at region boundaries on the synthetic scenes."""
    torch.manual_seed(0)
    scores = {n: [] for n in ["bilinear"] + GUIDED}
    for seed in (0, 1):
        sc = syn.make_scene(128, seed=seed, dim=64, n_regions=6, n_thin=2)
        low, img = syn.scene_tensors(sc)
        for n in scores:
            up = load_upsampler(n, device="cpu", **({"steps": 20} if n == "guided-fit" else {}))
            with torch.inference_mode():
                scores[n].append(syn.score(up.upsample(low, img)[0], sc))
    mean = {n: {k: np.mean([s[k] for s in v]) for k in v[0]} for n, v in scores.items()}
    base = mean["bilinear"]
    for n in GUIDED:
        # The target: at least 30% lower boundary error, and no metric worse.
        assert mean[n]["boundary_err"] < 0.7 * base["boundary_err"], (n, mean)
        assert mean[n]["cos"] > base["cos"], (n, mean)
        assert mean[n]["thin_iou"] >= base["thin_iou"] and mean[n]["miou"] >= base["miou"], (
            n,
            mean,
        )
        assert mean[n]["lowres_err"] <= base["lowres_err"], (n, mean)


def test_back_projection_cache_sees_new_values():
    """The corrected grid is cached across row tiles, but never served for other values."""
    low, img = _inputs()
    k = _up("jbu-classic", consistency=3).kernels(img, (4, 6))
    with torch.inference_mode():
        first = k(low, slice(0, 10))
        again = k(low, slice(0, 10))
    assert torch.equal(first, again)
    low.mul_(2.0)  # same tensor, new content
    with torch.inference_mode():
        doubled = k(low, slice(0, 10))
    assert torch.allclose(doubled, 2 * first, atol=1e-5)


def test_back_projection_improves_consistency():
    """More steps bring avgpool(upsampled) closer to the input grid."""
    sc = syn.make_scene(96, seed=2, dim=16, n_regions=5, n_thin=1)
    low, img = syn.scene_tensors(sc)
    errs = []
    for steps in (0, 5):
        with torch.inference_mode():
            out = _up("jbu-classic", consistency=steps).upsample(low, img)
        errs.append(syn.score(out[0], sc)["lowres_err"])
    assert errs[1] < 0.6 * errs[0], errs
