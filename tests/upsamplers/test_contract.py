"""The contract every registered upsampler keeps, checked for each of them.

Random weights where an upsampler has weights: these tests check code paths and
exactness between evaluation paths, never quality.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.backbones import pad_to_stride
from napari_featup.errors import UpsamplerError
from napari_featup.upsamplers import load_upsampler, upsampler_info

# the smallest settings that still exercise each upsampler's code (speed, not quality)
FAST: dict[str, dict] = {
    "guided-fit": {"steps": 3},
    "featup-implicit": {"steps": 2, "views": 4, "pca_views": 4, "batch": 2, "view_batch": 4},
}
NAMES = nf.list_upsamplers()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backbone():
    return nf.load_backbone("dinov2", weights="random", device="cpu")


@pytest.fixture(scope="module")
def inputs(backbone):
    """(lowres (1, 384, 3, 4), image (1, 3, 42, 56)): a two-region image, normalised."""
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 42, 56, generator=g) * 0.3
    img[..., 30:] += 1.0
    img = pad_to_stride(img, backbone.patch_size)
    with torch.inference_mode():
        low = backbone(img)
    return low.clone(), img


def _make(name, backbone, **extra):
    info = upsampler_info(name)
    kw = {"weights": "random"} if info.takes_weights else {}
    options = {**FAST.get(name, {}), **extra}
    return load_upsampler(name, backbone=backbone, device="cpu", **kw, **options)


def _pipeline_kwargs(name):
    """extract_features arguments for ``name`` with random weights and fast options."""
    weights = "random" if upsampler_info(name).takes_weights else None
    return {"upsampler_options": FAST.get(name), "upsampler_weights": weights}


def _fit(up, low, img):
    for _ in up.iter_fit(low, img):
        pass


@pytest.mark.parametrize("name", NAMES)
def test_registry_entry_is_complete(name):
    info = upsampler_info(name)
    assert info.cls.name == name and info.description
    assert dataclasses.is_dataclass(info.options)
    for key, value in info.defaults().items():  # the defaults are accepted as given
        nf.upsamplers.make_options(name, {key: value})
        nf.upsamplers.make_options(name, {key: str(value)})  # and as typed in a text field


@pytest.mark.parametrize("name", NAMES)
def test_shape_eval_mode_and_finite(name, backbone, inputs):
    low, img = inputs
    up = _make(name, backbone)
    assert not up.training and up.name == name
    _fit(up, low, img)
    with torch.inference_mode():
        out = up.upsample(low, img)
    assert out.shape == (1, low.shape[1]) + tuple(img.shape[-2:])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_tiled_equals_untiled(name, backbone, inputs):
    low, img = inputs
    up = _make(name, backbone)
    _fit(up, low, img)
    with torch.inference_mode():
        full = up.upsample(low, img)
        bands = [up.upsample(low, img, rows=slice(a, min(a + 11, 42))) for a in range(0, 42, 11)]
    torch.testing.assert_close(torch.cat(bands, dim=-2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if upsampler_info(n).cls.linear])
def test_kernel_reuse_equals_full_computation(name, backbone, inputs):
    low, img = inputs
    up = _make(name, backbone)
    _fit(up, low, img)
    w, b = torch.randn(2, low.shape[1]), torch.randn(2)
    with torch.inference_mode():
        k = up.kernels(img, tuple(low.shape[-2:]))
        fast = k.project(low, w, b)
        slow = torch.einsum("kc,bchw->bkhw", w, up.upsample(low, img)) + b[:, None, None]
        other = k.project(2 * low, w)  # the same kernels serve other values
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    assert other.shape == fast.shape


@pytest.mark.parametrize("name", [n for n in NAMES if upsampler_info(n).cls.content_linear])
def test_content_kernels_equal_full_computation(name, backbone, inputs):
    """Weights made from this (features, image) pair, applied to a projection of the
    low-res features, give the projection of the output (a click's cheap path)."""
    low, img = inputs
    up = _make(name, backbone)
    w, b = torch.randn(2, low.shape[1]), torch.randn(2)
    with torch.inference_mode():
        k = up.content_kernels(low, img)
        assert k is not None
        fast = k.project(low, w, b)
        slow = torch.einsum("kc,bchw->bkhw", w, up.upsample(low, img)) + b[:, None, None]
        assert up.content_kernels(low, img, max_bytes=0) is None  # the budget is kept
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [n for n in NAMES if upsampler_info(n).cls.fits_per_image])
def test_fit_yields_progress_and_cancels(name, backbone, inputs, rgb_image):
    low, img = inputs
    up = _make(name, backbone)
    gen = up.iter_fit(low, img)
    ev = next(gen)
    assert isinstance(ev, nf.Progress) and 0 <= ev.done <= ev.total and ev.stage == "fit"
    gen.close()  # cancelled mid-fit: nothing raised, and a full fit still works after
    _fit(up, low, img)
    seen = []
    with pytest.raises(nf.Cancelled):
        nf.extract_features(
            rgb_image,
            backbone,
            name,
            **FAST.get(name, {}) and {"upsampler_options": FAST[name]},
            progress=seen.append,
            should_cancel=lambda: any(e.stage == "fit" for e in seen),
        )
    fits = [e for e in seen if e.stage == "fit"]
    assert fits and 3 <= fits[0].done <= 4  # relayed into the pipeline's fit step


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_are_upsampler_errors(name, backbone):
    with pytest.raises(UpsamplerError, match="unknown option"):
        _make(name, backbone, no_such_option=1)
    defaults = upsampler_info(name).defaults()
    typed = {
        k: v for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if typed:
        key = next(iter(typed))
        with pytest.raises(UpsamplerError, match=key):
            _make(name, backbone, **{key: "not a number"})
    if not upsampler_info(name).takes_weights:
        with pytest.raises(UpsamplerError, match="no (pretrained )?weights"):
            load_upsampler(name, backbone=backbone, weights="x.ckpt", device="cpu")


@pytest.mark.parametrize("name", NAMES)
def test_pipeline_metadata_names_the_upsampler(name, backbone, rgb_image):
    res = nf.extract_features(rgb_image, backbone, name, **_pipeline_kwargs(name), highres=False)
    assert res.metadata["upsampler"] == name and res.metadata["random_weights"]
    sim = res.field.similarity([(10, 12)])
    assert sim.shape == rgb_image.shape[:2] and np.isfinite(sim).all()


@pytest.fixture
def docs_example():
    """The "Adding an upsampler" module from docs/library.md, registered for one test."""
    from pathlib import Path

    from napari_featup.upsamplers import _registry

    text = (Path(__file__).resolve().parents[2] / "docs" / "library.md").read_text()
    section = text.split("### Adding an upsampler", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    code = code.replace("from ._registry", "from napari_featup.upsamplers._registry")
    code = code.replace("from .base", "from napari_featup.upsamplers.base")
    namespace: dict = {}
    exec(compile(code, "docs/library.md", "exec"), namespace)  # noqa: S102 - our own docs
    yield namespace
    _registry._REGISTRY.pop("box", None)


def test_adding_an_upsampler_as_the_docs_show(docs_example, rgb_image):
    assert "box" in nf.list_upsamplers() and nf.upsamplers.upsampler_options("box") == {"factor": 1}
    res = nf.extract_features(
        rgb_image, "dinov2", "box", weights="random", upsampler_options={"factor": "2"}
    )
    assert res.highres.shape[1:] == rgb_image.shape[:2]
    np.testing.assert_allclose(res.field.similarity([(5, 5)])[5, 5], 1.0, atol=1e-5)
    with pytest.raises(UpsamplerError, match="factor must be >= 1"):
        load_upsampler("box", factor=0)
