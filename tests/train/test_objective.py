"""The 31-channel training objective equals FeatUp's full-channel one (train_reference.py:
as FeatUp's train_jbu_upsampler.py, downsamplers.py and losses.py compute it)."""

from __future__ import annotations

import pytest
import torch

from napari_featup.upsamplers.featup_jbu import FeatUpJBU
from napari_featup.upsamplers.featup_jbu.train_objective import (
    AttentionDownsampler,
    ScaleNet,
    crf_loss,
    draw,
    jitter,
    step_loss,
)
from napari_featup.upsamplers.featup_jbu.train_reference import (
    featup_apply_jitter,
    featup_crf,
    featup_loss,
)
from napari_featup.upsamplers.implicit.views import Jitter


@pytest.mark.parametrize("grid,patch", [((3, 3), 16), ((4, 4), 12)])
def test_fast_objective_equals_featup_full_channel(grid, patch):
    """Same loss and gradients (no dropout: the fast path's dropout draws differ by
    design, see Draws). patch 12: the 16x output is resized to the image, as for dinov2."""
    torch.manual_seed(0)
    dim, bsz, max_pad = 6, 2, 4
    jbu, down, sn = FeatUpJBU(dim), AttentionDownsampler(dim, patch), ScaleNet(dim)
    with torch.no_grad():
        for lay in jbu.layers:
            lay.range_temp.fill_(0.5)
        down.attention_net[1].weight.mul_(5)
    size = grid[0] * patch
    g = torch.Generator().manual_seed(1)
    img = torch.randn(bsz, 3, size, size, generator=g)
    lr = torch.randn(bsz, dim, *grid, generator=g)
    jits = [Jitter(1.0, 3, 5, True), Jitter(1.37, 11, 2, False)]
    d = draw(g, bsz, dim, (size, size), grid, jits, dropout=False, crf_samples=40)
    d.patch_keep[1][0, 1, 2] = False  # FeatUp's per-patch logit dropout, one patch
    jit_imgs = [jitter(img, j, max_pad) for j in jits]
    lr_jit = [torch.randn(bsz, dim, *grid, generator=g) for _ in jits]
    mods = [jbu, down, sn]

    def grads(fn):
        for m in mods:
            m.zero_grad()
        loss = fn(jbu, down, sn, img, lr, jit_imgs, lr_jit, d, max_pad, 0.01)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return float(loss), [p.grad.clone() for m in mods for p in m.parameters()]

    ours, g_ours = grads(step_loss)
    ref, g_ref = grads(featup_loss)
    assert ours == pytest.approx(ref, rel=1e-5)
    for a, b in zip(g_ours, g_ref):
        assert (a - b).abs().max() <= 2e-4 * b.abs().max() + 1e-8


def test_crf_expansion_equals_featup():
    g = torch.Generator().manual_seed(2)
    guide = torch.randn(2, 3, 20, 24, generator=g)
    feats = torch.randn(2, 5, 20, 24, generator=g)
    coords = torch.stack(
        [torch.randint(0, 20, (50,), generator=g), torch.randint(0, 24, (50,), generator=g)]
    )
    assert float(crf_loss(guide, feats, coords)) == pytest.approx(
        float(featup_crf(guide, feats, coords)), rel=1e-5
    )


@pytest.mark.parametrize(
    "j", [Jitter(1.0, 0, 40, False), Jitter(1.0, 17, 3, True), Jitter(1.999, 88, 87, True),
          Jitter(1.5, 0, 0, False), Jitter(1.23, 31, 60, False)]
)  # fmt: skip
def test_jitter_equals_featup_apply_jitter(j):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 48, 56, generator=g, requires_grad=True)
    ours, ref = jitter(x, j, 20), featup_apply_jitter(x, 20, j)
    # float32 sampling coordinates: ~1e-5 of a pixel at 150 px
    assert (ours - ref).abs().max() < 1e-4
    w = torch.randn(ours.shape, generator=g)
    ga = torch.autograd.grad((ours * w).sum(), x)[0]
    gb = torch.autograd.grad((ref * w).sum(), x)[0]
    assert (ga - gb).abs().max() < 1e-4
