import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_featup as nf
from napari_featup.backbones import BackboneError, pad_to_stride
from napari_featup.pipeline import Progress, iter_extract
from napari_featup.preprocess import ImageError, normalize, prepare_image
from napari_featup.upsamplers import Kernels, resize_bilinear


@pytest.mark.parametrize("shape", [(48, 64, 3), (50, 37), (33, 70, 4)])
def test_shapes_and_alignment_metadata(shape, rng):
    img = rng.integers(0, 255, shape, dtype=np.uint8)
    res = nf.extract_features(img, "dinov2", "bilinear", weights="random", device="cpu")
    h, w = shape[:2]
    gh, gw = -(-h // 14), -(-w // 14)
    assert res.lowres.shape == (384, gh, gw)
    assert res.highres.shape == (384, h, w)
    m = res.metadata
    assert m["random_weights"] and "random" in m["weights"]
    assert m["stride"] == 14 and m["grid"] == [gh, gw] and m["image_size"] == [h, w]
    assert m["lowres_scale"] == [14.0, 14.0] and m["lowres_translate"] == [6.5, 6.5]
    assert m["preprocessing"]["input_dtype"] == "uint8"


def test_bilinear_highres_is_interpolated_lowres(rgb_image):
    res = nf.extract_features(rgb_image, "dino16", "bilinear", weights="random")
    low = torch.from_numpy(res.lowres)[None]
    ref = F.interpolate(low, size=(48, 64), mode="bilinear", align_corners=False)[0]
    assert np.allclose(res.highres, ref.numpy(), atol=1e-5)


def test_lowres_matches_backbone_on_padded_input(rng):
    img = rng.random((40, 45)).astype(np.float32)
    res = nf.extract_features(img, "dino16", weights="random", scaling="range")
    bb = nf.load_backbone("dino16", weights="random")
    x01, _ = prepare_image(img, scaling="range")
    x = pad_to_stride(normalize(torch.from_numpy(x01))[None], 16)
    with torch.inference_mode():
        assert np.allclose(res.lowres, bb(x)[0].numpy(), atol=1e-5)


def test_tiled_highres_equals_untiled(rgb_image):
    a = nf.extract_features(rgb_image, "dino16", weights="random")
    b = nf.extract_features(rgb_image, "dino16", weights="random", tile_budget_mb=0.2)
    assert np.array_equal(a.highres, b.highres)


def test_resize_bilinear_rows_match_interpolate():
    x = torch.randn(1, 5, 7, 9)
    full = F.interpolate(x, size=(50, 61), mode="bilinear", align_corners=False)
    assert torch.allclose(resize_bilinear(x, (50, 61)), full, atol=1e-6)
    assert torch.allclose(
        resize_bilinear(x, (50, 61), slice(13, 29)), full[..., 13:29, :], atol=1e-6
    )


def test_progress_events_and_cancel(rgb_image):
    gen = iter_extract(rgb_image, "dino16", weights="random")
    events = []
    ev = next(gen)
    events.append(ev)
    assert isinstance(ev, Progress) and ev.step == 1 and ev.total >= 4
    gen.close()  # cancel: nothing more runs
    with pytest.raises(StopIteration):
        next(gen)

    seen = []
    with pytest.raises(nf.Cancelled, match="step 2"):
        nf.extract_features(
            rgb_image,
            "dino16",
            weights="random",
            progress=seen.append,
            should_cancel=lambda: len(seen) >= 2,
        )
    assert [e.step for e in seen] == [1, 2]


def test_field_similarity_and_pca_match_dense(rgb_image):
    res = nf.extract_features(rgb_image, "dino16", weights="random")
    s = res.field.similarity([(10, 12)])
    ref = nf.analysis.similarity_to_points(res.highres, [(10, 12)])
    assert np.allclose(s, ref, atol=1e-4)
    assert np.unravel_index(s.argmax(), s.shape) == (10, 12)
    pca = res.fit_pca()
    assert np.allclose(res.field.pca_rgb(pca), pca.to_rgb(res.highres), atol=1e-4)
    # colours agree between low-res and full-res at cell centres
    low = pca.to_rgb(res.lowres)
    assert np.allclose(res.field.pca_rgb(pca)[7, 7], low[0, 0], atol=1e-4)


def test_kernels_project_equals_upsample_then_project(rgb_image):
    res = nf.extract_features(rgb_image, "dino16", weights="random")
    k: Kernels = res.field.kernels
    w = torch.randn(2, 384)
    b = torch.randn(2)
    fast = k.project(res.field.lowres, w, b)
    slow = torch.einsum("kc,bchw->bkhw", w, k(res.field.lowres)) + b[:, None, None]
    assert torch.allclose(fast, slow, atol=1e-4)


def test_highres_false_keeps_field(rgb_image):
    res = nf.extract_features(rgb_image, "dino16", weights="random", highres=False)
    assert res.highres is None and res.field.similarity([(0, 0)]).shape == (48, 64)


def test_use_norm_normalises_lowres(rgb_image):
    res = nf.extract_features(rgb_image, "dino16", weights="random", use_norm=True)
    assert res.metadata["use_norm"]
    assert np.allclose(res.lowres.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(res.lowres.var(axis=0), 1, atol=1e-2)


@pytest.mark.parametrize(
    "image, kwargs, exc, match",
    [
        (np.zeros((0, 0)), {}, ImageError, "empty"),
        (np.zeros((1, 1)), {}, BackboneError, "at least 14 x 14"),
        (np.full((20, 20), np.nan), {}, ImageError, "NaN"),
        (np.zeros((2, 2, 3, 20, 20)), {}, ImageError, "channel_axis"),
        (np.zeros((20, 20)), {"backbone": "nope"}, BackboneError, "unknown backbone"),
        (np.zeros((20, 20)), {"upsampler": "nope"}, nf.UpsamplerError, "unknown upsampler"),
    ],
)
def test_bad_inputs(image, kwargs, exc, match):
    kw = {"backbone": "dinov2", "weights": "random"} | kwargs
    with pytest.raises(exc, match=match):
        nf.extract_features(image, **kw)


def test_parse_upsampler_options():
    from napari_featup.upsamplers import UpsamplerError, parse_options, upsampler_options

    assert parse_options("steps=40, settings=featup; lr=1e-3, flips=False") == {
        "steps": 40,
        "settings": "featup",
        "lr": 1e-3,
        "flips": False,
    }
    assert parse_options(["size=(1, 2)", "name=a,b"]) == {"size": (1, 2), "name": "a,b"}
    assert parse_options("") == {} and parse_options(None) == {}
    with pytest.raises(UpsamplerError, match="KEY=VALUE"):
        parse_options("steps 40")
    assert upsampler_options("bilinear") == {}
    assert upsampler_options("featup-implicit")["settings"] == "fast"
    assert "sigma_range" in upsampler_options("jbu-classic")
    with pytest.raises(UpsamplerError, match="unknown upsampler"):
        upsampler_options("nope")
