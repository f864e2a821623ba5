"""Seconds per step of FeatUp's own implicit training loop, for bench_implicit.py.

FeatUp's implicit upsampler is not installable here (no package on PyPI; its repo is a
training script), so this rebuilds the *structure* of one step of its
``train_implicit_upsampler.py`` with the same operations on tensors of the same sizes,
written from that script, ``layers.py``, ``downsamplers.py`` and
``datasets/JitteredImage.py``:

* the Fourier features are recomputed from the image every step (sin/cos of
  ``(y, x, colour) x 30 frequencies + learned phases``), then ChannelNorm (permute,
  LayerNorm, permute), Dropout2d and 1x1 convolutions 303 -> 128 -> 128 -> 128;
* each of the 10 views jitters the (1, 129, H, W) map: reflect pad by 30, bilinear zoom
  (``F.interpolate(scale_factor=zoom)``), crop, flip;
* the attention downsampler blurs (5 x 5 Gaussian, sigma 1, reflect), unfolds 29 x 29
  patches at stride ``(H - 29) // (grid - 1)``, applies Dropout + Linear(129 -> 1) to every
  patch pixel, masks 20 % of the logits, softmaxes over each patch and pools;
* loss: Gaussian NLL with a 1x1-conv uncertainty, magnitude, magnitude TV, blur pin;
  NAdam.

Only the time is used: parameters and targets are random. The loss curve of FeatUp's
settings comes from this package's fitter (same model, loss and settings), whose
arithmetic is cheaper (see ``napari_featup.upsamplers.implicit``).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from napari_featup.ops import gaussian_blur5 as _blur  # 5-tap Gaussian, sigma 1, reflect


class _ChannelNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Fourier(nn.Module):
    def __init__(self, n_freqs: int):
        super().__init__()
        self.n_freqs = n_freqs
        self.phases = nn.Parameter(torch.randn(2, 5, n_freqs))

    def forward(self, img):
        b, _, h, w = img.shape
        gy, gx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        feats = torch.cat([torch.stack([gy, gx])[None].expand(b, 2, h, w), img], 1)[:, None]
        freqs = torch.exp(torch.linspace(-2, 10, self.n_freqs)).reshape(1, -1, 1, 1, 1)
        feats = feats * freqs  # (b, F, 5, h, w)
        sin = (feats + self.phases[0].T.reshape(1, self.n_freqs, 5, 1, 1)).reshape(b, -1, h, w)
        cos = (feats + self.phases[1].T.reshape(1, self.n_freqs, 5, 1, 1)).reshape(b, -1, h, w)
        return torch.cat([torch.sin(sin), torch.cos(cos), img], 1)


class _AttnDown(nn.Module):
    def __init__(self, dim: int, kernel: int, grid: int):
        super().__init__()
        self.kernel, self.grid = kernel, grid
        self.net = nn.Sequential(nn.Dropout(0.2), nn.Linear(dim, 1))
        self.w = nn.Parameter(torch.ones(kernel, kernel) + 0.01 * torch.randn(kernel, kernel))
        self.b = nn.Parameter(0.01 * torch.randn(kernel, kernel))

    def forward(self, x):
        b, c, h, w = x.shape
        stride = (h - self.kernel) // (self.grid - 1)
        patches = F.unfold(_blur(x), self.kernel, stride=stride)
        patches = patches.reshape(b, c, self.kernel**2, self.grid, self.grid)
        patches = patches.permute(0, 3, 4, 2, 1)
        logits = self.net(patches).squeeze(-1)
        keep = torch.rand(b, self.grid, self.grid, 1) > 0.2
        w, bias = self.w.reshape(1, 1, 1, -1), self.b.reshape(1, 1, 1, -1)
        attn = F.softmax(logits * keep * w + bias, -1)
        return torch.einsum("bhwpc,bhwp->bchw", patches, attn)


def _jitter(x, pad, zoom, dy, dx, flip):
    h, w = x.shape[2:]
    x = F.pad(x, [pad] * 4, mode="reflect")
    if zoom > 1.0:
        x = F.interpolate(x, scale_factor=zoom, mode="bilinear")
    x = x[:, :, dy : dy + h, dx : dx + w]
    return torch.flip(x, [3]) if flip else x


def featup_step_seconds(
    image: torch.Tensor,
    grid: int,
    steps: int = 4,
    proj_dim: int = 128,
    n_freqs: int = 30,
    batch: int = 10,
    max_pad: int = 30,
    max_zoom: float = 1.8,
    kernel: int = 29,
    seed: int = 0,
) -> float:
    """Mean wall seconds of ``steps`` steps (after one warm-up) of FeatUp's loop on
    ``image`` (1, 3, H, W) with a ``grid`` x ``grid`` backbone grid."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    h, w = image.shape[-2:]
    start = 2 * 5 * n_freqs + 3
    up = nn.Sequential(
        _Fourier(n_freqs),
        _ChannelNorm(start),
        nn.Dropout2d(0.2),
        nn.Conv2d(start, proj_dim, 1),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        _ChannelNorm(proj_dim),
        nn.Conv2d(proj_dim, proj_dim, 1),
        nn.ReLU(),
        nn.Conv2d(proj_dim, proj_dim, 1),
    )
    down = _AttnDown(proj_dim + 1, kernel, grid)
    outlier = nn.Conv2d(proj_dim, 1, 1)
    optim = torch.optim.NAdam([*up.parameters(), *down.parameters(), *outlier.parameters()])
    targets = torch.randn(32, proj_dim, grid, grid, generator=g)
    lo, hi = image.amin(dim=(0, 2, 3), keepdim=True), image.amax(dim=(0, 2, 3), keepdim=True)
    scaled = (image - lo) / (hi - lo).clamp_min(1e-4) - 0.5  # FeatUp's MinMaxScaler

    def one_step():
        hr = up(scaled)
        mag = hr.square().sum(1, keepdim=True).sqrt()
        both = torch.cat([mag, hr], 1)
        views, tgt = [], []
        for _ in range(batch):
            u = torch.rand(3, generator=g).tolist()
            zoom = u[2] * (max_zoom - 1) + 1 if u[1] > 0.5 else 1.0
            dy = int(torch.randint(0, int((h + 2 * max_pad) * zoom) - h + 1, (), generator=g))
            dx = int(torch.randint(0, int((w + 2 * max_pad) * zoom) - w + 1, (), generator=g))
            views.append(_jitter(both, max_pad, zoom, dy, dx, u[0] > 0.5))
            tgt.append(targets[int(torch.randint(0, len(targets), (), generator=g))][None])
        target = torch.cat(tgt)
        out_both = down(torch.cat(views))
        out, out_mag = out_both[:, 1:], out_both[:, :1]
        scales = torch.exp(outlier(target) + 0.1).clamp_min(1e-4)
        loss = ((out - target).square() / (2 * scales**2) + scales.log()).mean()
        target_mag = target.square().sum(1, keepdim=True).sqrt()
        loss = loss + 0.001 * (out_mag - target_mag).square().mean()
        tv = (
            (mag[:, :, 1:] - mag[:, :, :-1]).square().sum()
            + (mag[..., 1:] - mag[..., :-1]).square().sum()
        ) / mag.numel()
        loss = loss + 0.05 * tv + 0.1 * (_blur(hr) - hr).square().mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError("FeatUp loop timing diverged")

    one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - t0) / steps
