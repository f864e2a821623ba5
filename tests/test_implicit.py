"""FeatUp's implicit upsampler: the fit API, its pieces against plain references, the
saved file, and the pipeline path. Everything runs on tiny images with a random-weight
backbone (no pretrained weights in tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_featup as nf
from napari_featup.field import FeatureField
from napari_featup.implicit import (
    AttentionDownsampler,
    FitProgress,
    ImplicitFeatures,
    ImplicitFitter,
    ImplicitNet,
    Jitter,
    ViewOps,
    _as_image_tensor,
    _gaussian_blur,
    _Taps,
    fit_implicit,
    iter_fit_implicit,
    resolve_config,
    window_origins,
)
from napari_featup.upsamplers import resize_bilinear

TINY = dict(views=6, pca_views=6, steps=3, batch=2, view_batch=6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors on a busy 2-core machine run several times faster on one thread
    (no waiting on a descheduled OpenMP worker)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bb():
    return nf.load_backbone("dinov2", weights="random", device="cpu")


@pytest.fixture(scope="module")
def image():
    """A 30 x 44 RGB image (not a multiple of the 14 px stride, not square)."""
    rng = np.random.default_rng(1)
    img = np.zeros((30, 44, 3), np.uint8)
    img[:, :20] = (220, 30, 30)
    img[10:, 20:] = (20, 40, 230)
    return img + rng.integers(0, 25, img.shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def fitted(bb, image):
    return fit_implicit(image, bb, seed=3, **TINY)


# ----------------------------------------------------------------- building blocks


@pytest.mark.parametrize(
    "zoom,dy,dx,flip", [(1.0, 3, 7, False), (1.37, 10, 2, True), (1.8, 34, 37, True)]
)
def test_jitter_matches_pad_zoom_crop_flip(zoom, dy, dx, flip):
    x = torch.randn(1, 4, 20, 24)
    pad = 5
    ref = F.pad(x, [pad] * 4, mode="reflect")
    if zoom > 1:
        ref = F.interpolate(ref, scale_factor=zoom, mode="bilinear")
    ref = ref[:, :, dy : dy + 20, dx : dx + 24]
    if flip:
        ref = ref.flip(3)
    j = Jitter(zoom, dy, dx, flip)
    torch.testing.assert_close(_Taps(j, (20, 24), pad, "cpu")(x), ref, atol=2e-5, rtol=0)
    # the blurred, downsampler-padded view as two matrix products, whole grid and windows
    s = 4
    down = AttentionDownsampler(4, s)
    full_ref = down.pad(_gaussian_blur(ref))
    full = ViewOps([j], (20, 24), pad, "cpu", s, (5, 6))(x)
    torch.testing.assert_close(full, full_ref, atol=2e-5, rtol=0)
    win = ViewOps([j], (20, 24), pad, "cpu", s, (2, 3), [(2, 1)])(x)
    torch.testing.assert_close(win[0], full_ref[0, :, 2 * s : 5 * s, s : 5 * s], atol=2e-5, rtol=0)


@pytest.mark.parametrize("cells,origins", [((5, 6), None), ((2, 3), [(2, 1), (0, 3), (3, 0)])])
def test_view_pooling_matches_pooling_the_views(cells, origins):
    """ViewOps.pool (rows on each view's source band, window weights pulled back through
    the column operator) equals pooling the jittered, blurred views, value and gradient."""
    torch.manual_seed(0)
    s, size, pad = 4, (20, 24), 5
    js = [Jitter(1.0, 3, 7, False), Jitter(1.37, 10, 2, True), Jitter(1.8, 34, 37, True)]
    ops = ViewOps(js, size, pad, "cpu", s, cells, origins)
    x = torch.randn(1, 6, *size, requires_grad=True)
    kh, kw = cells
    attn = torch.softmax(torch.randn(3, kh, kw, 4 * s * s), -1).reshape(3, kh, kw, 2, s, 2, s)
    ref = AttentionDownsampler(6, s).pool(ops(x), attn)
    out = ops.pool(x[0].permute(1, 2, 0), attn)
    assert out.shape == (3, 6, kh, kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    g = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad((out * g).sum(), x)[0],
        torch.autograd.grad((ref * g).sum(), x)[0],
        atol=1e-5,
        rtol=0,
    )


def test_attention_downsampler_matches_unfold_reference():
    torch.manual_seed(0)
    s, h, w = 4, 3, 5
    d = AttentionDownsampler(6, s)
    x = torch.randn(2, 6, h * s, w * s)
    out = d(x, (h, w))
    blurred = d.pad(_gaussian_blur(x))
    k = 2 * s
    patches = F.unfold(blurred, k, stride=s).reshape(2, 6, k * k, h, w).permute(0, 3, 4, 2, 1)
    attn = torch.softmax(d.attn(patches).squeeze(-1) * d.w.reshape(-1) + d.b.reshape(-1), -1)
    ref = torch.einsum("bhwpc,bhwp->bchw", patches, attn)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # constant maps pool to themselves (weights sum to one)
    const = torch.full((1, 6, h * s, w * s), 2.5)
    torch.testing.assert_close(d(const, (h, w)), torch.full((1, 6, h, w), 2.5), atol=1e-5, rtol=0)


def _featup_mlp(net, coords, colour, gen=None, p=0.0):
    """FeatUp's stack written out: Fourier features with learned phases (frequency-
    major channels), LayerNorm, Dropout2d, 1x1 convs (as Linear on pixels)."""
    inp = torch.cat([coords, colour], 1).double()
    freqs = torch.exp(torch.linspace(-2.0, 10.0, net.n_freqs, dtype=torch.float64))
    arg = inp[:, None, :] * freqs[None, :, None]  # (N, F, 5): index f * 5 + d
    p0 = net.phases[0].T.double()  # (F, 5)
    p1 = net.phases[1].T.double()
    n = len(inp)
    x = torch.cat(
        [torch.sin(arg + p0).reshape(n, -1), torch.cos(arg + p1).reshape(n, -1), colour.double()], 1
    ).float()
    x = F.layer_norm(x, x.shape[1:], net.norm_in.weight, net.norm_in.bias, net.norm_in.eps)
    if p > 0:
        x = x * ((torch.rand(x.shape[1:], generator=gen) >= p).float() / (1 - p))
    x = F.relu(net.fc1(x))
    if p > 0:
        x = x * ((torch.rand((1, x.shape[1]), generator=gen) >= p).float() / (1 - p))
    return net.fc3(F.relu(net.fc2(net.norm_mid(x))))


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_implicit_net_matches_featup_formula(p):
    """The folded first layer (one product on the phase-free input) is FeatUp's
    phases + LayerNorm + dropout + fc1, in value and in gradient."""
    torch.manual_seed(0)
    net = ImplicitNet(30, 16)
    with torch.no_grad():  # trained-looking norms, not the identity init
        net.norm_in.weight.uniform_(0.5, 1.5)
        net.norm_in.bias.normal_(0, 0.2)
    n = 500
    coords = torch.rand(n, 2, dtype=torch.float64) * 2 - 1
    colour = torch.rand(n, 3) - 0.5
    e = ImplicitNet.encode(coords, colour, 30)
    out = net(e, torch.Generator().manual_seed(5), p)
    ref = _featup_mlp(net, coords, colour, torch.Generator().manual_seed(5), p)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad((ref * g).sum(), list(net.parameters()))
    for (name, _), a, b in zip(net.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


# ----------------------------------------------------------------- API


def test_render_sizes_and_rows(fitted, bb):
    assert fitted.original_size == (30, 44)
    assert fitted.fit_size == (42, 56)  # padded to the 14 px stride
    full = fitted.render()
    assert full.shape == (1, bb.dim, 30, 44) and full.dtype == torch.float32
    assert torch.isfinite(full).all()
    for size in [(7, 9), (61, 90), (120, 33)]:
        assert fitted.render(size).shape == (1, bb.dim) + size
    band = fitted.render((61, 90), rows=slice(20, 37))
    torch.testing.assert_close(band, fitted.render((61, 90))[:, :, 20:37], atol=1e-5, rtol=0)
    # tiny tile budget: many one-row tiles, same result
    torch.testing.assert_close(fitted.render(budget_bytes=1), full, atol=1e-5, rtol=0)
    # an image at the render size supplies the colours (FeatUp's colour frequencies reach
    # e^10, so only the very same colours give the very same features)
    img = resize_bilinear(fitted.image, (61, 90))
    torch.testing.assert_close(
        fitted.render((61, 90), image=img), fitted.render((61, 90)), atol=1e-5, rtol=0
    )
    assert (
        fitted.render((61, 90), image=img.flip(-1)) - fitted.render((61, 90))
    ).abs().max() > 1e-3


def test_features_are_not_constant_and_follow_the_image(fitted):
    f = fitted.render()[0]
    assert f.std(dim=(1, 2)).mean() > 1e-4


def test_save_load_round_trip(fitted, tmp_path):
    path = fitted.save(tmp_path / "fit.pt")
    loaded = ImplicitFeatures.load(path)
    assert loaded.info["seed"] == 3 and loaded.info["backbone"] == "dinov2"
    assert loaded.original_size == fitted.original_size
    torch.testing.assert_close(loaded.render((40, 50)), fitted.render((40, 50)), atol=1e-5, rtol=0)
    # a plain dict of tensors: loads with weights_only=True
    st = torch.load(path, weights_only=True)
    assert st["format"] == "napari-featup-implicit"
    with pytest.raises(FileExistsError, match="overwrite"):
        fitted.save(path)
    fitted.save(path, overwrite=True)


def test_load_rejects_other_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="napari-featup-implicit"):
        ImplicitFeatures.load(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable"):
        ImplicitFeatures.load(junk)
    with pytest.raises(FileNotFoundError):
        ImplicitFeatures.load(tmp_path / "missing.pt")


def test_progress_and_cancel(bb, image):
    gen = iter_fit_implicit(image, bb, **TINY)
    events = []
    for ev in gen:
        events.append(ev)
        if ev.done > TINY["views"]:  # the first optimiser step is done
            break
    gen.close()  # cancelled: no result, no error
    assert all(isinstance(e, FitProgress) for e in events)
    assert events[0].done == 0 and events[0].total == TINY["views"] + TINY["steps"]
    assert np.isnan(events[0].loss) and np.isfinite(events[-1].loss)
    assert [e.done for e in events] == sorted(e.done for e in events)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(nf.Cancelled, match="cancelled"):
        fit_implicit(image, bb, should_cancel=cancel, **TINY)
    assert len(calls) == 2


def test_same_seed_same_result_other_seed_differs(bb, image, fitted):
    again = fit_implicit(image, bb, seed=3, **TINY)
    torch.testing.assert_close(again.render(), fitted.render(), atol=0, rtol=0)
    other = fit_implicit(image, bb, seed=4, **TINY)
    assert (other.render() - fitted.render()).abs().max() > 1e-3


def test_loss_decreases_on_small_image(bb, image):
    cfg = resolve_config("fast", views=8, pca_views=8, steps=25, batch=4, cells=0, warmup=2)
    fitter = ImplicitFitter(_as_image_tensor(image), bb, cfg, seed=0)
    for _ in fitter.iter_views():
        pass
    fitter.build()
    held = fitter.make_jitters(6, torch.Generator().manual_seed(99))
    raw = fitter.view_features(held)
    before = fitter.evaluate(held, raw)
    for _ in range(cfg.steps):
        fitter.step()
    after = fitter.evaluate(held, raw)
    assert after["loss"] < before["loss"] - 0.02, (before, after)
    assert np.mean(fitter.losses[-5:]) < np.mean(fitter.losses[:5])


def test_window_origins_cover_border_cells():
    """Fast settings score each view on a random window of cells; corner cells must be
    covered nearly as often as central ones (uniform window starts left a fit's
    borders untrained)."""
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(16, 20)
    for i, j in window_origins(4000, (16, 20), (8, 8), gen):
        assert 0 <= i <= 8 and 0 <= j <= 12
        counts[i : i + 8, j : j + 8] += 1
    assert counts[0, 0] > 0.2 * counts.max(), counts


def test_windowed_step_runs(bb, image):
    cfg = resolve_config("fast", views=4, pca_views=4, steps=2, batch=2, cells=2)
    fitter = ImplicitFitter(_as_image_tensor(image), bb, cfg, seed=0)  # grid 3 x 4
    for _ in fitter.iter_views():
        pass
    ops = fitter.view_ops(fitter.jitters[:2], random_windows=True)
    assert ops.cells == (2, 2) and ops(torch.zeros(1, 1, 42, 56)).shape == (2, 1, 42, 42)
    fitter.build()
    assert np.isfinite(fitter.step())


def test_large_image_is_fitted_downscaled(bb):
    rng = np.random.default_rng(0)
    img = (rng.random((70, 100)) * 255).astype(np.uint8)  # grey, 7000 px
    feats = fit_implicit(img, bb, max_fit_pixels=1500, **TINY)
    assert feats.content_size[0] * feats.content_size[1] <= 1500
    assert feats.content_size[0] / feats.content_size[1] == pytest.approx(0.7, abs=0.05)
    assert feats.render().shape == (1, bb.dim, 70, 100)


def test_presets():
    featup = resolve_config("featup")
    # FeatUp's configs/implicit_upsampler.yaml and train_implicit_upsampler.py
    assert (featup.views, featup.steps, featup.batch, featup.lr) == (3000, 1200, 10, 2e-3)
    assert (featup.n_freqs, featup.proj_dim, featup.pca_views, featup.max_pad) == (30, 128, 50, 30)
    assert (featup.dropout, featup.cells, featup.schedule) == (0.2, 0, "constant")
    fast, preview = resolve_config("fast"), resolve_config("Preview")
    assert preview.views * preview.steps < fast.views * fast.steps < featup.views * featup.steps
    assert resolve_config("fast", steps=None).steps == fast.steps  # None: keep the preset's
    assert resolve_config(fast, steps=9).steps == 9


def test_bad_inputs(bb, image):
    with pytest.raises(ValueError, match="unknown implicit settings"):
        resolve_config("slow")
    with pytest.raises(ValueError, match="unknown implicit option"):
        resolve_config("fast", stepz=3)
    with pytest.raises(ValueError, match="steps=0"):
        resolve_config("fast", steps=0)
    with pytest.raises(ValueError, match="lr="):
        resolve_config("fast", lr=-1.0)
    with pytest.raises(ValueError, match="max_zoom"):
        resolve_config("fast", max_zoom=0.5)
    with pytest.raises(ValueError, match="tensor image"):
        next(iter_fit_implicit(torch.zeros(2, 3, 20, 20), bb, **TINY))
    with pytest.raises(ValueError, match="seed"):
        next(iter_fit_implicit(image, bb, seed="x", **TINY))
    with pytest.raises(ValueError, match="backbone"):
        next(iter_fit_implicit(image, 3.5, **TINY))
    with pytest.raises(nf.BackboneError, match="at least"):
        next(iter_fit_implicit(np.zeros((8, 8, 3), np.uint8), bb, **TINY))
    with pytest.raises(nf.ImageError):
        next(iter_fit_implicit(np.zeros((0, 5)), bb, **TINY))


def test_render_bad_arguments(fitted):
    with pytest.raises(ValueError, match="render size"):
        fitted.render((0, 5))
    with pytest.raises(ValueError, match="contiguous"):
        fitted.render((10, 10), rows=slice(0, 10, 2))
    with pytest.raises(ValueError, match="render image"):
        fitted.render((10, 10), image=torch.zeros(1, 3, 9, 10))


# ----------------------------------------------------------------- upsampler / pipeline


def test_pipeline_featup_implicit(image):
    events = []
    res = nf.extract_features(
        image,
        "dinov2",
        "featup-implicit",
        weights="random",
        device="cpu",
        upsampler_options={"steps": 2, "views": 4, "pca_views": 4, "batch": 2},
        progress=events.append,
    )
    assert res.lowres.shape == (384, 3, 4)
    assert res.highres.shape == (384, 30, 44) and np.isfinite(res.highres).all()
    assert any("implicit fit" in e.message for e in events)
    info = res.metadata["upsampler_info"]
    assert info["steps_done"] == 2 and info["settings"]["views"] == 4
    assert res.metadata["use_norm"] is True  # FeatUp's implicit default
    # interaction works on the non-linear field
    sim = res.field.similarity([(5, 5)])
    assert sim.shape == (30, 44) and sim[5, 5] == pytest.approx(1.0, abs=1e-2)
    # the field keeps the 128 PCA coordinates, not the 384 channels, and answers the same
    field = res.field
    assert field._dense.shape == (128, 30, 44) and field._dense.dtype == torch.float32
    w = np.random.default_rng(0).normal(size=(2, 384)).astype(np.float32)
    b = np.array([0.5, -1.0], np.float32)
    direct = np.einsum("kc,chw->khw", w, res.highres) + b[:, None, None]
    assert np.abs(field.project(w, b) - direct).max() < 1e-4 * np.abs(direct).max()
    np.testing.assert_allclose(field.features_at([(7, 9)])[0], res.highres[:, 7, 9], atol=1e-4)
    # evaluated in row tiles, it matches one whole evaluation
    tiled = FeatureField(
        field.lowres, field.image, field.upsampler, field.size, tile_budget_bytes=200_000
    )
    assert tiled.tile_rows() < 30
    np.testing.assert_allclose(tiled.project(w, b), field.project(w, b), rtol=0, atol=1e-5)
    # above the float32 budget the store is float16: half the memory, ~1e-3 relative
    half = FeatureField(
        field.lowres, field.image, field.upsampler, field.size, dense_float32_bytes=1000
    )
    got = half.project(w, b)
    assert half._dense.dtype == torch.float16
    assert np.abs(got - direct).max() < 1e-2 * np.abs(direct).max()


def test_pipeline_cancel_during_fit(image):
    seen = []

    def cancel():
        return any("implicit fit: fitting" in e.message for e in seen)

    with pytest.raises(nf.Cancelled):
        nf.extract_features(
            image,
            "dinov2",
            "featup-implicit",
            weights="random",
            device="cpu",
            upsampler_options={"steps": 50, "views": 4, "pca_views": 4, "batch": 2},
            progress=seen.append,
            should_cancel=cancel,
        )
    assert not any(e.message.startswith("upsampling") for e in seen)


def test_upsampler_rows_and_options(bb, image):
    up = nf.load_upsampler(
        "featup-implicit", backbone=bb, device="cpu", steps=2, views=4, pca_views=4, batch=2
    )
    assert up.name == "featup-implicit" and not up.linear and up.use_norm
    x = _as_image_tensor(image)
    from napari_featup.backbones import pad_to_stride

    padded = pad_to_stride(x, 14)
    low = nf.upsamplers.channel_norm(bb(padded))
    list(up.iter_fit(low, padded))
    full = up.upsample(low, padded)
    assert full.shape == (1, 384, 42, 56)
    torch.testing.assert_close(
        up.upsample(low, padded, rows=slice(10, 20)), full[:, :, 10:20], atol=1e-5, rtol=0
    )
    assert list(up.iter_fit(low, padded)) == []  # same image: not refitted
    # asked to render without a fit, under inference_mode (as FeatureField does): fits first
    fresh = nf.load_upsampler(
        "featup-implicit", backbone=bb, device="cpu", steps=1, views=2, pca_views=2, batch=1
    )
    with torch.inference_mode():
        assert fresh.upsample(low, padded, rows=slice(0, 3)).shape == (1, 384, 3, 56)
    with pytest.raises(ValueError, match="no pretrained weights"):
        nf.load_upsampler("featup-implicit", backbone=bb, weights="x.ckpt")
    with pytest.raises(ValueError, match="needs the backbone"):
        nf.load_upsampler("featup-implicit", backbone=None)
    with pytest.raises(ValueError, match="unknown implicit option"):
        nf.load_upsampler("featup-implicit", backbone=bb, colour=1)
    with pytest.raises(ValueError, match="made for backbone"):
        up.upsample(torch.zeros(1, 10, 3, 4), padded)
