"""The contract every registered backbone keeps, with random weights.

Each backbone is built once (a module-scoped fixture, parametrised, so pytest builds,
tests and frees them one at a time); the largest (ViT-L, about 300 M parameters) build
in a few seconds on one CPU core, so none is left out of the default run.
"""

import gc

import pytest
import torch

import napari_featup as nf
from napari_featup.backbones import GROUPS, featup_checkpoint_settings, get_spec

NAMES = [*nf.list_backbones(), "timm:vit_tiny_patch16_224", "timm:resnet18"]


@pytest.fixture(scope="module", params=NAMES)
def bb(request):
    model = nf.load_backbone(request.param, weights="random", device="cpu", cache=False)
    yield model
    del model
    gc.collect()


def _x(h, w, seed=1, batch=1):
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_spec_and_listing(bb):
    spec = get_spec(bb.name)
    assert bb.spec == spec and not bb.training and bb.weights == "random"
    assert (bb.dim, bb.patch_size) == (spec.dim, spec.stride)
    assert spec.group in GROUPS and spec.licence and spec.description
    info = spec.describe()
    assert info["featup_jbu"] == featup_checkpoint_settings(bb.name)
    assert spec.featup_checkpoint == bool(info["featup_jbu"]) == (spec.group == "featup")
    assert all(not p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize(
    "shape",
    [
        lambda s: (2 * s, 2 * s),  # square
        lambda s: (2 * s, 3 * s),  # non-square
        lambda s: (2 * s + 5, 3 * s - 1),  # not a multiple of the stride: padded
        lambda s: (s, s),  # one patch
    ],
    ids=["square", "non-square", "non-multiple", "one-patch"],
)
def test_output_dims_and_grid(bb, shape):
    h, w = shape(bb.patch_size)
    with torch.inference_mode():
        y = bb(_x(h, w))
    s = bb.patch_size
    assert y.shape == (1, bb.dim, -(-h // s), -(-w // s))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_deterministic_and_batch_independent(bb):
    s = bb.patch_size
    x = _x(2 * s, 3 * s, batch=2)
    with torch.inference_mode():
        y1, y2, single = bb(x), bb(x), bb(x[1:])
    assert torch.equal(y1, y2)
    assert torch.allclose(y1[1:], single, atol=1e-4, rtol=1e-4)


def test_too_small_and_bad_shape(bb):
    s = bb.patch_size
    with pytest.raises(nf.BackboneError, match=f"at least {s} x {s}"):
        bb(_x(s - 1, 2 * s))
    with pytest.raises(nf.BackboneError, match="expected a"):
        bb(torch.zeros(1, 1, 2 * s, 2 * s))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="float16 needs CUDA")
def test_float16_on_gpu_matches_float32(bb):
    half = nf.load_backbone(
        bb.name, weights="random", device="cuda", precision="float16", cache=False
    )
    full = bb.to("cuda")
    s = bb.patch_size
    x = _x(4 * s, 5 * s).cuda()
    try:
        with torch.inference_mode():
            y16, y32 = half(x), full(x)
        assert y16.dtype == torch.float32 and torch.isfinite(y16).all()
        assert float((y16 - y32).norm() / y32.norm()) < 5e-2  # random weights, half precision
    finally:
        bb.to("cpu")
        del half
        torch.cuda.empty_cache()
