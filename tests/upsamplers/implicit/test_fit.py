"""The fit API: progress events and cancel, seeds, the loss going down, windowed
steps, large images, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.upsamplers.implicit import (
    FitProgress,
    ImplicitFeatures,
    ImplicitFitter,
    fit_implicit,
    iter_fit_implicit,
    resolve_config,
)
from napari_featup.upsamplers.implicit.fit import as_image_tensor


def test_progress_and_cancel(bb, image, tiny):
    gen = iter_fit_implicit(image, bb, **tiny)
    events = []
    for ev in gen:
        events.append(ev)
        if ev.done > tiny["views"]:  # the first optimiser step is done
            break
    gen.close()  # cancelled: no result, no error
    assert all(isinstance(e, FitProgress) for e in events)
    assert events[0].done == 0 and events[0].total == tiny["views"] + tiny["steps"]
    assert np.isnan(events[0].loss) and np.isfinite(events[-1].loss)
    assert [e.done for e in events] == sorted(e.done for e in events)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(nf.Cancelled, match="cancelled"):
        fit_implicit(image, bb, should_cancel=cancel, **tiny)
    assert len(calls) == 2


def test_same_seed_same_result_other_seed_differs(bb, image, fitted, tiny):
    again = fit_implicit(image, bb, seed=3, **tiny)
    torch.testing.assert_close(again.render(), fitted.render(), atol=0, rtol=0)
    other = fit_implicit(image, bb, seed=4, **tiny)
    assert (other.render() - fitted.render()).abs().max() > 1e-3


def test_loss_decreases_on_small_image(bb, image):
    cfg = resolve_config("fast", views=8, pca_views=8, steps=25, batch=4, cells=0, warmup=2)
    fitter = ImplicitFitter(as_image_tensor(image), bb, cfg, seed=0)
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


def test_windowed_step_runs(bb, image):
    cfg = resolve_config("fast", views=4, pca_views=4, steps=2, batch=2, cells=2)
    fitter = ImplicitFitter(as_image_tensor(image), bb, cfg, seed=0)  # grid 3 x 4
    for _ in fitter.iter_views():
        pass
    ops = fitter.view_ops(fitter.jitters[:2], random_windows=True)
    assert ops.cells == (2, 2) and ops(torch.zeros(1, 1, 42, 56)).shape == (2, 1, 42, 42)
    fitter.build()
    assert np.isfinite(fitter.step())


def test_large_image_is_fitted_downscaled(bb, tiny):
    rng = np.random.default_rng(0)
    img = (rng.random((70, 100)) * 255).astype(np.uint8)  # grey, 7000 px
    feats = fit_implicit(img, bb, max_fit_pixels=1500, **tiny)
    assert feats.content_size[0] * feats.content_size[1] <= 1500
    assert feats.content_size[0] / feats.content_size[1] == pytest.approx(0.7, abs=0.05)
    assert feats.render().shape == (1, bb.dim, 70, 100)


def test_bad_inputs(bb, image, tiny):
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
        next(iter_fit_implicit(torch.zeros(2, 3, 20, 20), bb, **tiny))
    with pytest.raises(ValueError, match="seed"):
        next(iter_fit_implicit(image, bb, seed="x", **tiny))
    with pytest.raises(ValueError, match="backbone"):
        next(iter_fit_implicit(image, 3.5, **tiny))
    with pytest.raises(nf.BackboneError, match="at least"):
        next(iter_fit_implicit(np.zeros((8, 8, 3), np.uint8), bb, **tiny))
    with pytest.raises(nf.ImageError):
        next(iter_fit_implicit(np.zeros((0, 5)), bb, **tiny))


def test_errors_are_package_types(bb, image, tiny, tmp_path):
    """Bad settings, images and files raise the package's error types (ValueErrors)."""
    with pytest.raises(nf.UpsamplerError):
        resolve_config("fast", steps=0)
    with pytest.raises(nf.UpsamplerError):
        next(iter_fit_implicit(image, bb, seed="x", **tiny))
    with pytest.raises(nf.ImageError):
        next(iter_fit_implicit(torch.zeros(2, 3, 20, 20), bb, **tiny))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(nf.FeatureFileError):
        ImplicitFeatures.load(junk)
    torch.save({"format": "napari-featup-implicit", "format_version": 1}, junk)
    with pytest.raises(nf.FeatureFileError, match="missing or malformed"):
        ImplicitFeatures.load(junk)
