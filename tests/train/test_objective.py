"""The 31-channel training objective equals FeatUp's full-channel one (written here as
FeatUp's train_jbu_upsampler.py, downsamplers.py and losses.py compute it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_featup.ops import gaussian_blur5
from napari_featup.upsamplers.featup_jbu import FeatUpJBU, reference_forward
from napari_featup.upsamplers.featup_jbu.train_objective import (
    AttentionDownsampler,
    ScaleNet,
    crf_loss,
    draw,
    step_loss,
)
from napari_featup.upsamplers.implicit.views import Jitter, JitterTaps


def featup_apply_jitter(img, max_pad, j: Jitter):
    """FeatUp's datasets/JitteredImage.apply_jitter."""
    h, w = img.shape[2:]
    padded = F.pad(img, [max_pad] * 4, mode="reflect")
    zoomed = F.interpolate(padded, scale_factor=j.zoom, mode="bilinear") if j.zoom > 1 else padded
    cropped = zoomed[:, :, j.dy : h + j.dy, j.dx : w + j.dx]
    return torch.flip(cropped, [3]) if j.flip else cropped


def featup_downsample(down: AttentionDownsampler, hr, keep):
    """FeatUp's AttentionDownsampler.forward (blur_attn=True), eval-mode attention net,
    with the per-patch logit dropout given."""
    b, c, h, w = hr.shape
    k = down.kernel_size
    final = h // k
    inputs = gaussian_blur5(hr)
    stride = (h - k) // (final - 1)
    patches = (
        torch.nn.Unfold(k, stride=stride)(inputs)
        .reshape(b, c, k * k, final, final * int(w / h))
        .permute(0, 3, 4, 2, 1)
    )
    logits = down.attention_net[1](patches).squeeze(-1)
    logits = (logits * keep[..., None]) * down.w.flatten() + down.b.flatten()
    attn = F.softmax(logits, dim=-1)
    return torch.einsum("bhwpc,bhwp->bchw", patches, attn)


def featup_crf(guidance, features, coords, alpha=0.1, beta=0.15, gamma=0.005, w1=10, w2=3):
    h, w = guidance.shape[2:]
    norm = coords / torch.tensor([h, w]).unsqueeze(-1)
    g = guidance[:, :, coords[0], coords[1]]
    cd = (norm.unsqueeze(-1) - norm.unsqueeze(-2)).square().sum(0).unsqueeze(0)
    gd = (g.unsqueeze(-1) - g.unsqueeze(-2)).square().sum(1)
    sim = w1 * torch.exp(-cd / (2 * alpha) - gd / (2 * beta)) + w2 * torch.exp(-cd / (2 * gamma))
    f = features[:, :, coords[0], coords[1]]
    return ((f.unsqueeze(-1) - f.unsqueeze(-2)).square().sum(1) * sim).mean()


def featup_loss(jbu, down, scale_net, img, lr, jit_imgs, lr_jit, d, max_pad, crf_weight):
    total = 0.0
    n_j = len(d.jitters)
    for i, j in enumerate(d.jitters):
        hr = reference_forward(jbu, lr, img)
        if hr.shape[2] != img.shape[2]:
            hr = F.interpolate(hr, img.shape[2:], mode="bilinear")
        hr_jit = featup_apply_jitter(hr, max_pad, j)
        proj = d.proj[i]
        proj_hr = torch.einsum("bchw,bcd->bdhw", hr_jit, proj)
        down_jit = torch.einsum(
            "bchw,bcd->bdhw", featup_downsample(down, hr_jit, d.patch_keep[i]), proj
        )
        s = scale_net(lr_jit[i])
        mse = (down_jit - torch.einsum("bchw,bcd->bdhw", lr_jit[i], proj)).square()
        loss = ((1 / (2 * s**2)) * mse + s.log()).mean() / n_j
        if i == 0:
            loss = loss + crf_weight * featup_crf(jit_imgs[0], proj_hr, d.crf_coords)
        total = total + loss
    return total


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
    jit_imgs = [JitterTaps(j, (size, size), max_pad, "cpu")(img) for j in jits]
    for j, ji in zip(jits, jit_imgs):
        assert torch.allclose(ji, featup_apply_jitter(img, max_pad, j), atol=1e-5)
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
