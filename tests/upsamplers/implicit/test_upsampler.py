"""``featup-implicit`` as an upsampler: through the pipeline (with the feature field),
cancelled during the fit, rendering rows, its options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.field import FeatureField
from napari_featup.upsamplers.implicit.fit import as_image_tensor


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
    assert res.metadata["use_norm"] is True  # ours; FeatUp's config says false (docs)
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
    x = as_image_tensor(image)
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
