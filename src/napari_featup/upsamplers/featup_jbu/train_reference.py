"""FeatUp's JBU training loss written the way FeatUp computes it: the whole C-channel
JBU output (``reference.py``) for every jitter, FeatUp's ``apply_jitter``,
``AttentionDownsampler.forward`` over unfolded patches, and ``SampledCRFLoss`` with its
(B, C, n, n) differences. Slow; it is the check of ``train_objective.py`` (the tests)
and the baseline of its step time (``benchmarks/bench_train_step.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...ops import gaussian_blur5
from ..implicit.views import Jitter
from .reference import reference_forward
from .train_objective import AttentionDownsampler


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


__all__ = ["featup_apply_jitter", "featup_crf", "featup_downsample", "featup_loss"]
