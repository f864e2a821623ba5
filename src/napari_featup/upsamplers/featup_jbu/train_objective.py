"""FeatUp's JBU training objective, evaluated through a few channels instead of all of them.

FeatUp (``train_jbu_upsampler.py``): per jitter, the JBU output ``hr`` of the image is
jittered (reflect pad, zoom, crop, flip), an attention downsampler (``downsamplers.py``,
``AttentionDownsampler``: 5-tap Gaussian blur, one logit per pixel from a linear map of
the features, a learned ``w * logit + b`` per patch position, softmax over the patch)
pools it back to the grid, and the loss compares that with the backbone's features of
the jittered image after a random projection to 30 dims, weighted by a learned
uncertainty (``ScaleNet``: ``mse / (2 s^2) + log s``); plus a sampled CRF term on the
projected high-res features (``losses.py``, ``SampledCRFLoss``).

Everything between ``hr`` and the loss is linear in ``hr``'s channels and shared across
them (jitter, blur, the patch softmax weights), except that the attention logits and the
30 projections read ``hr`` through 31 linear maps. The stack is channel-linear too, so
those 31 maps are pulled back onto the low-res grid (through the final
``x + 0.1 conv(x)``), and only 31 channels per jitter go through the JBU layers: 155 for
5 jitters, whatever the feature dim. The loss equals FeatUp's (the tests compare it
with a full-channel evaluation) but for the three dropout choices named in
:class:`Draws`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import gaussian_blur5
from ..implicit.views import Jitter
from .autograd import stack_linear
from .stack import FeatUpJBU

#: dims of FeatUp's random projection (``random_projection: 30``)
PROJ_DIM = 30


class AttentionDownsampler(nn.Module):
    """FeatUp's ``AttentionDownsampler`` parameters (``w``, ``b``, ``attention_net.1``), so
    its state dict loads into FeatUp; evaluated by :func:`attention_pool` here."""

    def __init__(self, dim: int, kernel_size: int, gen: torch.Generator | None = None):
        super().__init__()
        self.kernel_size = int(kernel_size)
        k = self.kernel_size
        self.attention_net = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(dim, 1))
        self.w = nn.Parameter(torch.ones(k, k) + 0.01 * torch.randn(k, k, generator=gen))
        self.b = nn.Parameter(torch.zeros(k, k) + 0.01 * torch.randn(k, k, generator=gen))


class ScaleNet(nn.Module):
    """FeatUp's per-location uncertainty: ``exp(conv1x1(feats) + 0.1)``, at least 1e-4."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():  # FeatUp scales the default init by 0.1
            self.net.weight.mul_(0.1)
            self.net.bias.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(x) + 0.1).clamp_min(1e-4)


@dataclass
class Draws:
    """Every random draw of one training step, made up front from the trainer's generator
    (so a step is reproducible from the generator state at its start).

    Dropout as FeatUp trains (its modules are in train mode) with three choices made so
    that 31 channels per jitter suffice: the JBU layers' Dropout2d masks are drawn once
    per step and shared by the jitters (FeatUp re-runs the stack, so new masks, per
    jitter); the final conv's Dropout2d(0.2) is per jitter, as in FeatUp; the attention
    net's input dropout (FeatUp: per feature element of every pixel) is per sample and
    channel of the attention vector, per jitter.
    """

    jitters: list[Jitter]
    proj: list[torch.Tensor]  # per jitter (B, C, 30), unit columns
    layer_masks: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer (B,32), (B,49)
    final_masks: list[torch.Tensor] | None  # per jitter (B, C)
    attn_masks: list[torch.Tensor] | None  # per jitter (B, C)
    patch_keep: list[torch.Tensor]  # per jitter (B, h, w) bool: FeatUp's logit dropout
    crf_coords: torch.Tensor  # (2, n) rows, cols

    def to(self, device) -> Draws:
        def mv(x):
            if x is None:
                return None
            if isinstance(x, torch.Tensor):
                return x.to(device)
            if isinstance(x, tuple):
                return tuple(mv(t) for t in x)
            return [mv(t) for t in x]

        return Draws(
            self.jitters,
            mv(self.proj),
            mv(self.layer_masks),
            mv(self.final_masks),
            mv(self.attn_masks),
            mv(self.patch_keep),
            self.crf_coords.to(device),
        )


def _mask(gen: torch.Generator, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """Dropout keep-mask scaled by 1/(1-p), as torch's dropout."""
    return (torch.rand(shape, generator=gen) >= p).float() / (1 - p)


def draw(
    gen: torch.Generator,
    bsz: int,
    dim: int,
    size: tuple[int, int],
    grid: tuple[int, int],
    jitters: list[Jitter],
    dropout: bool = True,
    crf_samples: int = 1000,
) -> Draws:
    """The random projections, dropout masks and CRF samples of one step (on CPU)."""
    proj = []
    for _ in jitters:
        p = torch.randn(bsz, dim, PROJ_DIM, generator=gen)
        proj.append(p / p.square().sum(1, keepdim=True).sqrt())
    n_j = len(jitters)
    layer_masks = final = attn = None
    if dropout:
        layer_masks = [(_mask(gen, (bsz, 32), 0.1), _mask(gen, (bsz, 49), 0.1)) for _ in range(4)]
        final = [_mask(gen, (bsz, dim), 0.2) for _ in range(n_j)]
        attn = [_mask(gen, (bsz, dim), 0.2) for _ in range(n_j)]
        keep = [torch.rand((bsz, *grid), generator=gen) > 0.2 for _ in range(n_j)]
    else:
        keep = [torch.ones((bsz, *grid), dtype=torch.bool) for _ in range(n_j)]
    h, w = size
    coords = torch.stack(
        [
            torch.randint(0, h, (crf_samples,), generator=gen),
            torch.randint(0, w, (crf_samples,), generator=gen),
        ]
    )
    return Draws(jitters, proj, layer_masks, final, attn, keep, coords)


def crf_loss(
    guidance: torch.Tensor,
    feats: torch.Tensor,
    coords: torch.Tensor,
    alpha: float = 0.1,
    beta: float = 0.15,
    gamma: float = 0.005,
    w1: float = 10.0,
    w2: float = 3.0,
) -> torch.Tensor:
    """FeatUp's ``SampledCRFLoss`` (shift 0) at the sampled pixels ``coords`` (2, n).

    ``|f_n - f_m|^2`` is expanded as ``|f_n|^2 + |f_m|^2 - 2 f_n.f_m`` so the (B, C, n, n)
    differences FeatUp forms are never built.
    """
    h, w = guidance.shape[-2:]
    rows, cols = coords[0], coords[1]
    norm = torch.stack([rows / h, cols / w]).to(feats.dtype)
    g = guidance[:, :, rows, cols].to(feats.dtype)  # (B, 3, n)
    f = feats[:, :, rows, cols]  # (B, C, n)
    coord_d = (norm[:, :, None] - norm[:, None, :]).square().sum(0)[None]

    def sqdist(x: torch.Tensor) -> torch.Tensor:
        sq = x.square().sum(1)
        return (sq[:, :, None] + sq[:, None, :] - 2 * x.transpose(1, 2) @ x).clamp_min(0)

    sim = w1 * torch.exp(-coord_d / (2 * alpha) - sqdist(g) / (2 * beta))
    sim = sim + w2 * torch.exp(-coord_d / (2 * gamma))
    return (sqdist(f) * sim).mean()


def jitter(x: torch.Tensor, j: Jitter, max_pad: int) -> torch.Tensor:
    """FeatUp's ``apply_jitter`` on (B, C, H, W): reflect pad, bilinear zoom, crop, flip.

    The zoom and crop are one ``grid_sample`` of the padded map at the crop's pixels
    (the coordinates ``F.interpolate(scale_factor=zoom)`` uses), so the zoomed map
    (up to 2x the padded size) is never formed and the backward is one native pass.
    """
    h, w = x.shape[-2:]
    pad = F.pad(x, [max_pad] * 4, mode="reflect")
    if j.zoom == 1.0:
        out = pad[:, :, j.dy : j.dy + h, j.dx : j.dx + w]
        return out.flip(3) if j.flip else out
    ph, pw = pad.shape[-2:]
    dt = x.dtype
    ys = (torch.arange(h, device=x.device, dtype=torch.float64) + j.dy + 0.5) / j.zoom - 0.5
    xs = (torch.arange(w, device=x.device, dtype=torch.float64) + j.dx + 0.5) / j.zoom - 0.5
    if j.flip:
        xs = xs.flip(0)
    # pixel coordinates -> grid_sample's [-1, 1] (align_corners=False); F.interpolate
    # clamps negative source positions to 0, as padding_mode="border" does
    gy = ((2 * ys.clamp(min=0) + 1) / ph - 1).to(dt)
    gx = ((2 * xs.clamp(min=0) + 1) / pw - 1).to(dt)
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)
    grid = grid[None].expand(x.shape[0], h, w, 2)
    return F.grid_sample(pad, grid, mode="bilinear", padding_mode="border", align_corners=False)


def attention_pool(
    x: torch.Tensor, logit: torch.Tensor, down: AttentionDownsampler, keep: torch.Tensor
) -> torch.Tensor:
    """FeatUp's attention pooling of blurred maps over non-overlapping k x k patches.

    ``x`` (B, K, H, W) the blurred (projected) features, ``logit`` (B, H, W) the blurred
    attention logits (bias included), ``keep`` (B, h, w) FeatUp's per-patch logit dropout
    -> (B, K, h, w).
    """
    k = down.kernel_size
    bsz, ch, hh, ww = x.shape
    h, w = hh // k, ww // k
    pl = logit.reshape(bsz, h, k, w, k).permute(0, 1, 3, 2, 4).reshape(bsz, h, w, k * k)
    pl = pl * keep[..., None].to(pl.dtype)
    attn = torch.softmax(pl * down.w.reshape(-1) + down.b.reshape(-1), dim=-1)
    patches = x.reshape(bsz, ch, h, k, w, k).permute(0, 2, 4, 3, 5, 1).reshape(bsz, h, w, -1, ch)
    return torch.einsum("bhwpc,bhwp->bchw", patches, attn)


def step_loss(
    jbu: FeatUpJBU,
    down: AttentionDownsampler,
    scale_net: ScaleNet,
    img: torch.Tensor,
    lr: torch.Tensor,
    jit_imgs: list[torch.Tensor],
    lr_jit: list[torch.Tensor],
    d: Draws,
    max_pad: int,
    crf_weight: float = 0.001,
    crf_on_jittered: bool = True,
) -> tuple[torch.Tensor, dict[str, float]]:
    """FeatUp's loss of one batch (summed over jitters, as its per-jitter backward sums).

    Parameters
    ----------
    img
        (B, 3, H, W) normalised images; ``lr`` their (normed) features (B, C, h, w).
    jit_imgs, lr_jit
        Per jitter, the jittered images and their features.
    d
        The step's random draws (on the device).
    crf_on_jittered
        Pair the CRF's guidance with the features it scores (the jittered view). FeatUp
        passes the *un-jittered* image with the jittered features; False reproduces that.

    Returns
    -------
    (loss, parts)
        The scalar loss and its parts (``rec``, ``crf``) as floats.
    """
    bsz, dim = lr.shape[:2]
    n_j = len(d.jitters)
    size = tuple(img.shape[-2:])
    conv = jbu.fixup_proj[1]
    a_mat, a_bias = conv.weight[:, :, 0, 0], conv.bias
    att = down.attention_net[1]
    eye = torch.eye(dim, device=lr.device, dtype=lr.dtype)
    maps, biases = [], []
    for j in range(n_j):
        # the 31 linear maps of hr this jitter reads: 30 projections and the logit
        rows = torch.cat([d.proj[j].transpose(1, 2), att.weight.expand(bsz, 1, dim)], 1)
        if d.attn_masks is not None:
            rows = torch.cat([rows[:, :PROJ_DIM], rows[:, PROJ_DIM:] * d.attn_masks[j][:, None]], 1)
        fin = d.final_masks[j] if d.final_masks is not None else None
        amat = a_mat if fin is None else a_mat[None] * fin[:, None, :]
        # hr = (I + 0.1 A diag(mask)) stack(lr) + 0.1 b: pull rows back through it
        maps.append(rows @ (eye + 0.1 * amat))
        biases.append(rows @ (0.1 * a_bias))
    m = torch.cat(maps, 1)  # (B, 31 J, C)
    vals = torch.einsum("bkc,bchw->bkhw", m, lr)
    hr = stack_linear(jbu, vals, img, d.layer_masks)  # (B, 16h, 16w, 31 J)
    hr = hr.permute(0, 3, 1, 2)
    if tuple(hr.shape[-2:]) != size:  # FeatUp: bilinear to the image when not 16x
        hr = F.interpolate(hr, size, mode="bilinear", align_corners=False)
    hr = hr + torch.cat(biases, 1)[:, :, None, None]
    rec = hr.new_zeros(())
    crf = hr.new_zeros(())
    # split, not slices: a slice's backward writes a zero map of the whole input per use
    for j, part in enumerate(hr.split(PROJ_DIM + 1, 1)):
        u = jitter(part, d.jitters[j], max_pad)  # (B, 31, H, W): projections, logit
        proj_b, logit_b = gaussian_blur5(u).split([PROJ_DIM, 1], 1)
        pooled = attention_pool(proj_b, logit_b[:, 0] + att.bias, down, d.patch_keep[j])
        target = torch.einsum("bchw,bcd->bdhw", lr_jit[j], d.proj[j])
        s = scale_net(lr_jit[j])
        mse = (pooled - target).square()
        rec = rec + ((1 / (2 * s**2)) * mse + s.log()).mean() / n_j
        if j == 0 and crf_weight > 0:
            guide = jit_imgs[0] if crf_on_jittered else img
            crf = crf_loss(guide, u.split([PROJ_DIM, 1], 1)[0], d.crf_coords)
    loss = rec + crf_weight * crf
    return loss, {"rec": float(rec.detach()), "crf": float(crf.detach())}


__all__ = [
    "PROJ_DIM",
    "AttentionDownsampler",
    "Draws",
    "ScaleNet",
    "attention_pool",
    "crf_loss",
    "draw",
    "jitter",
    "step_loss",
]
