"""The differentiable JBU path (featup_jbu/autograd.py) against the reference path:
gradcheck on tiny float64 inputs, values and gradients in float32."""

from __future__ import annotations

import pytest
import torch

from napari_featup.upsamplers.featup_jbu import FeatUpJBU, reference_forward, reference_layer
from napari_featup.upsamplers.featup_jbu.autograd import (
    FoldedApply,
    RangeLogits,
    fold_kernels,
    layer_kernels,
    stack_linear,
)


def _stack(dim: int, dtype=torch.float32, seed: int = 0) -> FeatUpJBU:
    torch.manual_seed(seed)
    up = FeatUpJBU(dim)
    # non-trivial weights: FeatUp's init leaves range_temp 0 and sigma 1
    with torch.no_grad():
        for lay in up.layers:
            lay.range_temp.fill_(0.7)
            lay.sigma_spatial.fill_(0.8)
    return up.to(dtype).eval()


def test_folded_apply_gradcheck():
    g = torch.Generator().manual_seed(1)
    # full Jacobians; a 2 x 5 grid spans two tiles across and a partial one down
    kf = torch.randn(1, 2, 5, 2, 2, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    src = torch.randn(1, 2, 5, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(FoldedApply.apply, (kf, src))
    # fast mode (random projections of the Jacobian) on a batch of larger grids
    kf = torch.randn(2, 5, 9, 2, 2, 7, 7, dtype=torch.float64, generator=g, requires_grad=True)
    src = torch.randn(2, 5, 9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(FoldedApply.apply, (kf, src), fast_mode=True)


def test_range_logits_gradcheck():
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(2, 4 + 6, 5 + 6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(RangeLogits.apply, (emb,))


def test_stack_gradcheck_float64():
    """Whole differentiable stack (values and every parameter) on a 2 x 3 grid."""
    up = _stack(2, torch.float64)
    g = torch.Generator().manual_seed(3)
    vals = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    img = torch.randn(1, 3, 32, 48, dtype=torch.float64, generator=g)
    # the scalar parameters and a bias of every layer (each element costs two evaluations)
    params = []
    for lay in up.layers:
        params += [
            lay.range_temp,
            lay.sigma_spatial,
            lay.range_proj[3].bias,
            lay.fixup_proj[3].bias,
        ]

    def f(v, *ps):
        return stack_linear(up, v, img).sum(-1)[0, ::5, ::7]

    assert torch.autograd.gradcheck(
        f, (vals, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


def _reference_linear(up: FeatUpJBU, vals: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    x = vals
    for layer in up.layers:
        h, w = x.shape[-2:]
        x = reference_layer(layer, x, torch.nn.functional.adaptive_avg_pool2d(img, (2 * h, 2 * w)))
    return x


@pytest.mark.parametrize("grid", [(3, 4), (5, 7)])
def test_values_and_gradients_match_reference_float32(grid):
    up = _stack(6)
    g = torch.Generator().manual_seed(4)
    h, w = grid
    vals = torch.randn(2, 6, h, w, generator=g)
    img = torch.randn(2, 3, 16 * h, 16 * w, generator=g)
    weight = torch.randn(2, 6, 16 * h, 16 * w, generator=g)

    def run(fn):
        up.zero_grad()
        v = vals.clone().requires_grad_(True)
        out = fn(v)
        (out * weight).sum().backward()
        grads = [v.grad] + [p.grad.clone() for p in up.parameters() if p.grad is not None]
        return out.detach(), grads

    ours, g_ours = run(lambda v: stack_linear(up, v, img).permute(0, 3, 1, 2))
    ref, g_ref = run(lambda v: _reference_linear(up, v, img))
    assert (ours - ref).abs().max() <= 2e-5 * ref.abs().max()
    assert len(g_ours) == len(g_ref)
    for a, b in zip(g_ours, g_ref):
        # float32 sums in another order (thread count): ~1e-4 relative; a wrong
        # gradient is off by O(1)
        assert (a - b).abs().max() <= 3e-4 * b.abs().max() + 1e-7


def test_full_stack_matches_reference_forward():
    """stack_linear plus the final affine is FeatUp's whole stack."""
    up = _stack(5)
    g = torch.Generator().manual_seed(5)
    lr = torch.randn(1, 5, 3, 3, generator=g)
    img = torch.randn(1, 3, 48, 48, generator=g)
    conv = up.fixup_proj[1]
    a = torch.eye(5) + 0.1 * conv.weight[:, :, 0, 0]
    with torch.no_grad():
        mixed = torch.einsum("kc,bchw->bkhw", a, lr)
        ours = stack_linear(up, mixed, img).permute(0, 3, 1, 2) + 0.1 * conv.bias[:, None, None]
        ref = reference_forward(up, lr, img)
    assert (ours - ref).abs().max() <= 2e-5 * ref.abs().max()


def test_layer_kernels_match_inference_tap_kernels():
    up = _stack(4)
    g = torch.Generator().manual_seed(6)
    guide = torch.randn(2, 3, 10, 12, generator=g)
    layer = up.layers[0]
    from napari_featup.upsamplers.featup_jbu.reference import _reflect_pad

    with torch.no_grad():
        ours = layer_kernels(layer, guide).permute(0, 3, 1, 2)
        ref = layer.tap_kernels(_reflect_pad(guide, 3))
    assert (ours - ref).abs().max() < 1e-5
    assert fold_kernels(ours.permute(0, 2, 3, 1)).shape == (2, 5, 6, 2, 2, 7, 7)
