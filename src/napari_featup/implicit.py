"""FeatUp's implicit upsampler: a small network fitted to one image.

FeatUp (Fu et al., ICLR 2024) fits, per image, a per-pixel MLP on Fourier features of
the pixel position and colour, so that its full-resolution features, put through the
same random jitter (reflect pad, zoom, crop, flip) as the image and downsampled by a
learned attention pooling, reproduce the backbone's features of the jittered image.
FeatUp ships this only as a training script; here it is an API:

    feats = fit_implicit(image, backbone, settings="fast", seed=0)
    hr = feats.render((H, W))            # (1, C, H, W), in row tiles
    feats.save("img.implicit.pt"); ImplicitFeatures.load("img.implicit.pt")

:func:`iter_fit_implicit` is the generator underneath: it yields :class:`FitProgress`
(done, total, loss, message) and returns the :class:`ImplicitFeatures`; a consumer that
stops iterating cancels the fit.

Facts taken from FeatUp's public code (``train_implicit_upsampler.py``,
``configs/implicit_upsampler.yaml``, ``layers.py``, ``downsamplers.py``,
``datasets/JitteredImage.py``, ``losses.py``) are reproduced by the ``"featup"``
settings: 3000 jittered views, 1200 steps of NAdam (lr 2e-3) on 10 views each, views
reflect-padded by 30 px, zoomed in [1, 1.8] half the time, cropped and flipped half the
time; features reduced to 128 PCA dimensions fitted on 50 views; 30 frequencies
exp-spaced from e^-2 to e^10 with learned phases; dropout 0.2; loss = Gaussian
negative log-likelihood with a learned per-location scale, + 0.001 x magnitude,
+ 0.05 x magnitude total variation, + 0.1 x blur pin.

Deliberate differences from FeatUp's script (same model and loss, cheaper arithmetic):

* Fourier features use ``sin(a + p) = sin(a) cos(p) + cos(a) sin(p)``: ``a`` (position
  or colour times frequency) is fixed for an image, so its sine and cosine are computed
  once in float64. The phases, LayerNorm, dropout and first linear layer are then folded
  into one matrix product on those constants (``ImplicitNet._first_layer``).
* Jitter and blur are per-axis matrices (the exact taps of reflect pad + bilinear zoom +
  crop + flip, and the 5-tap Gaussian). Features are never jittered as a map: each
  view's rows are taken on its source band and the attention windows are pulled back
  through the column matrix (``ViewOps.pool``).
* The attention downsampler pools windows of 2 x stride centred on each patch
  (FeatUp: 29 px at stride 14/16) over a reflect-padded map, via 2 x 2 shifted block
  views instead of ``Unfold`` (4x less memory). Its input dropout is drawn per pixel,
  not per (window, pixel), and its random logit mask only runs while training.
* Scaling of the colour input (FeatUp's MinMaxScaler) uses the fit image's range,
  stored with the model, so tiles and other render sizes see the same inputs.
* Images larger than ``max_fit_pixels`` are fitted at a reduced size (aspect kept) and
  rendered at any size with the full-resolution colours.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Backbone, load_backbone, pad_to_stride
from .devices import resolve_device
from .progress import drive
from .upsamplers.base import channel_norm

FORMAT = "napari-featup-implicit"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ImplicitConfig:
    """Every knob of the fit. ``SETTINGS`` holds the named presets."""

    views: int = 3000  # jittered views featurised by the backbone
    steps: int = 1200  # optimiser steps
    batch: int = 10  # views per step
    lr: float = 2e-3  # NAdam learning rate (FeatUp: torch's default)
    schedule: str = "constant"  # "constant" or "cosine" (decay to lr_floor * lr)
    lr_floor: float = 0.05
    warmup: int = 0  # linear warm-up steps
    n_freqs: int = 30  # Fourier frequencies, exp(linspace(-2, 10, n_freqs))
    proj_dim: int = 128  # PCA dimensions the network predicts
    pca_views: int = 50  # views the PCA is fitted on
    max_pad: int = 30  # reflect padding of a view (px)
    max_zoom: float = 1.8
    flips: bool = True
    dropout: float = 0.2  # Dropout2d in the MLP
    attn_dropout: float = 0.2  # dropout on the attention downsampler's input
    logit_mask: float = 0.2  # fraction of windows whose attention logits are zeroed
    mag_weight: float = 0.001
    mag_tv_weight: float = 0.05
    blur_pin: float = 0.1
    cells: int = 0  # >0: each view's loss covers a random window of cells x cells grid cells
    view_batch: int = 16  # views per backbone call
    max_fit_pixels: int = 2 * 224 * 224  # larger images are fitted downscaled

    def to_dict(self) -> dict:
        return asdict(self)


SETTINGS: dict[str, ImplicitConfig] = {
    # FeatUp's train_implicit_upsampler.py with configs/implicit_upsampler.yaml.
    "featup": ImplicitConfig(),
    # Fewer views (the backbone on 3000 views dominates on CPU), each scored on a random
    # 8 x 8 window of grid cells (16 windows cost about half of FeatUp's 10 whole views),
    # a higher peak lr with warm-up and cosine decay, and fewer steps. Chosen with
    # benchmarks/bench_implicit.py at 224 px on one CPU core against a full FeatUp run
    # (3000 views, 1200 steps): 8 windows a step end higher, 32 gain nothing per step,
    # 512 views nothing over 256. docs/implicit.md has the curves and the speed-up.
    "fast": ImplicitConfig(
        views=256,
        steps=700,
        batch=16,
        cells=8,
        lr=8e-3,
        schedule="cosine",
        warmup=5,
        pca_views=32,
    ),
    # A quick look: the same recipe cut to 32 views and 70 steps (about 1/13 of "fast"'s
    # time; its held-out loss levels off near that of FeatUp's 60th step).
    "preview": ImplicitConfig(
        views=32,
        steps=70,
        batch=4,
        cells=8,
        lr=8e-3,
        schedule="cosine",
        warmup=5,
        pca_views=32,
    ),
}


def resolve_config(settings: str | ImplicitConfig = "fast", **overrides: Any) -> ImplicitConfig:
    """A preset name (``"fast"``, ``"preview"``, ``"featup"``) or config, with overrides
    (``None`` values are ignored)."""
    if isinstance(settings, ImplicitConfig):
        cfg = settings
    else:
        key = str(settings).lower()
        if key not in SETTINGS:
            raise ValueError(
                f"unknown implicit settings {settings!r}; choose one of {', '.join(SETTINGS)}"
            )
        cfg = SETTINGS[key]
    names = {f.name for f in fields(ImplicitConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise ValueError(f"unknown implicit option(s) {bad}; accepted: {sorted(names)}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    _check_config(cfg)
    return cfg


def _check_config(cfg: ImplicitConfig) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"implicit option {what}")

    need(
        isinstance(cfg.cells, (int, np.integer)) and cfg.cells >= 0,
        f"cells={cfg.cells!r} must be a whole number >= 0",
    )
    for name in ("views", "steps", "batch", "n_freqs", "proj_dim", "pca_views", "view_batch"):
        v = getattr(cfg, name)
        need(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1,
            f"{name}={v!r} must be a whole number >= 1",
        )
    need(
        isinstance(cfg.max_fit_pixels, (int, np.integer)) and cfg.max_fit_pixels >= 256,
        f"max_fit_pixels={cfg.max_fit_pixels!r} must be a whole number >= 256",
    )
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"lr={cfg.lr!r} must be a positive number")
    need(
        cfg.schedule in ("constant", "cosine"),
        f"schedule={cfg.schedule!r} must be 'constant' or 'cosine'",
    )
    need(cfg.max_zoom >= 1.0, f"max_zoom={cfg.max_zoom!r} must be >= 1")
    need(cfg.max_pad >= 0, f"max_pad={cfg.max_pad!r} must be >= 0")
    for name in ("dropout", "attn_dropout", "logit_mask"):
        v = getattr(cfg, name)
        need(0.0 <= v < 1.0, f"{name}={v!r} must be in [0, 1)")


class FitProgress(NamedTuple):
    """One event of a fit: ``done`` of ``total`` units (views featurised + steps),
    the latest training loss (NaN before the first step) and what is being done."""

    done: int
    total: int
    loss: float
    message: str

    def __str__(self) -> str:
        return f"implicit fit {self.done}/{self.total}: {self.message}"


# --------------------------------------------------------------------------- model


def _frequencies(n: int) -> torch.Tensor:
    return torch.exp(torch.linspace(-2.0, 10.0, n, dtype=torch.float64))


def _dropout_mask(
    shape: tuple[int, ...], p: float, gen: torch.Generator | None, device
) -> torch.Tensor | None:
    if p <= 0:
        return None
    keep = torch.rand(shape, generator=gen, device=device) >= p
    return keep.float() / (1.0 - p)


class ImplicitNet(nn.Module):
    """Per-pixel MLP on Fourier features of (y, x, colour) with learned phases.

    Input per pixel: 5 values (y, x in [-1, 1]; colour scaled to [-0.5, 0.5]) times
    ``n_freqs`` frequencies -> sin and cos with learned phases (2 * 5 * n_freqs) plus
    the scaled colour (3): 303 features for 30 frequencies. Then LayerNorm, dropout,
    Linear -> 128, ReLU, dropout, LayerNorm, Linear, ReLU, Linear: ``out_dim``
    features (the PCA space).
    """

    def __init__(self, n_freqs: int = 30, out_dim: int = 128):
        super().__init__()
        self.n_freqs = n_freqs
        in_dim = 2 * 5 * n_freqs + 3
        self.phases = nn.Parameter(torch.randn(2, 5, n_freqs))
        self.norm_in = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.norm_mid = nn.LayerNorm(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.fc3 = nn.Linear(out_dim, out_dim)

    @staticmethod
    def encode(coords: torch.Tensor, colour: torch.Tensor, n_freqs: int) -> torch.Tensor:
        """The phase-free network input of each pixel: (N, 2) coords and (N, 3) scaled
        colour -> (N, 2 * 5 * n_freqs + 3) = [sin a, cos a, colour], a = input x frequency
        (index d * n_freqs + f for input d, frequency f).

        Computed in float64 (arguments reach e^10 ~ 22000) and returned in float32.
        """
        inp = torch.cat([coords, colour], dim=1).double()  # (N, 5)
        arg = (inp[:, :, None] * _frequencies(n_freqs).to(inp.device)).reshape(len(inp), -1)
        return torch.cat([torch.sin(arg), torch.cos(arg), inp[:, 2:]], dim=1).float()

    def _first_layer(self, m: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """fc1(dropout(LayerNorm(x))) as affine maps of the phase-free input ``e``.

        With learned phases p0, p1: x = [sin(a + p0), cos(a + p1), colour], and
        sin(a + p0) = sin a cos p0 + cos a sin p0 (likewise cos), so x = R(p) e is linear
        in e. LayerNorm's mean is then a dot product with e, its mean square a dot
        product with [sin^2 a, sin a cos a] (cos^2 = 1 - sin^2), and fc1 of the normed,
        dropped-out x is (e @ G.T - mean * u) / std + v. Returns G (out, in), the mean
        weights (in,), the mean-square weights (2 * 5F,) and constant, u and v (out,).
        """
        nf = 5 * self.n_freqs
        # FeatUp orders the Fourier channels frequency-major (f * 5 + d); e is d-major.
        perm = torch.arange(nf, device=self.phases.device).reshape(5, self.n_freqs)
        perm = ((perm % self.n_freqs) * 5 + perm // self.n_freqs).reshape(-1)
        p0, p1 = self.phases[0].reshape(nf), self.phases[1].reshape(nf)
        g = self.norm_in.weight if m is None else self.norm_in.weight * m
        beta = self.norm_in.bias if m is None else self.norm_in.bias * m
        w = self.fc1.weight
        ws, wc = (
            w[:, :nf][:, perm] * g[:nf][perm],
            w[:, nf : 2 * nf][:, perm] * g[nf : 2 * nf][perm],
        )
        c0, s0, c1, s1 = torch.cos(p0), torch.sin(p0), torch.cos(p1), torch.sin(p1)
        big_g = torch.cat([ws * c0 - wc * s1, ws * s0 + wc * c1, w[:, 2 * nf :] * g[2 * nf :]], 1)
        n_in = w.shape[1]
        mean_w = torch.cat([c0 - s1, s0 + c1, torch.ones(3, device=w.device)]) / n_in
        sq_w = (
            torch.cat(
                [torch.cos(2 * p0) - torch.cos(2 * p1), torch.sin(2 * p0) - torch.sin(2 * p1)]
            )
            / n_in
        )
        sq_c = (s0.square() + c1.square()).sum() / n_in
        return big_g, mean_w, sq_w, sq_c, w @ g, w @ beta + self.fc1.bias

    def forward(
        self,
        e: torch.Tensor,
        gen: torch.Generator | None = None,
        dropout: float = 0.0,
    ) -> torch.Tensor:
        """(N, 303) phase-free input from :meth:`encode` -> (N, out_dim).

        Same arithmetic as FeatUp's stack (phases, LayerNorm, dropout, fc1, ...) but the
        first layer is one matrix product on the constant ``e`` (see ``_first_layer``), so
        neither the 303 mixed features nor their gradients are ever formed.
        ``dropout`` > 0 (training) drops whole input and hidden channels, like FeatUp's
        Dropout2d on a one-image batch, with masks drawn from ``gen``.
        """
        nf = 5 * self.n_freqs
        m = _dropout_mask((e.shape[1],), dropout, gen, e.device)
        big_g, mean_w, sq_w, sq_c, u, v = self._first_layer(m)
        mean = e @ mean_w
        with torch.no_grad():
            s = e[:, :nf]
            sq_in = torch.cat([s * s, s * e[:, nf : 2 * nf]], 1)
            col_sq = e[:, 2 * nf :].square().sum(1) / e.shape[1]
        var = (sq_in @ sq_w + sq_c + col_sq - mean.square()).clamp_min(0)
        rstd = torch.rsqrt(var + self.norm_in.eps)
        x = torch.addmm(-mean[:, None] * u, e, big_g.T) * rstd[:, None] + v
        x = F.relu(x)
        m = _dropout_mask((1, x.shape[1]), dropout, gen, x.device)
        if m is not None:
            x = x * m
        x = F.relu(self.fc2(self.norm_mid(x)))
        return self.fc3(x)


def _gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """5-tap Gaussian (sigma 1) blur of (B, C, H, W), reflect border, per channel."""
    t = torch.arange(5, dtype=torch.float64, device=x.device) - 2
    k = torch.exp(-(t**2) / 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    x = F.pad(x, (2, 2, 2, 2), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)


class AttentionDownsampler(nn.Module):
    """FeatUp's learned attention pooling from pixels to the backbone grid.

    Each grid cell pools a (2s x 2s) window centred on its patch (s = stride) of the
    Gaussian-blurred map, weighted by ``softmax(logit * w + b)`` over the window, where
    ``logit = Linear(C -> 1)`` of the blurred pixel and ``w``, ``b`` are learned per
    window offset (initialised to 1 and 0, plus 0.01 noise). Inputs are (B, C, h*s, w*s)
    maps already blurred; the logits are passed in (they are linear in the map, so the
    caller computes them on one channel, see :meth:`ImplicitFitter.objective`).
    """

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        k = 2 * stride
        self.attn = nn.Linear(dim, 1)
        self.w = nn.Parameter(torch.ones(k, k) + 0.01 * torch.randn(k, k))
        self.b = nn.Parameter(torch.zeros(k, k) + 0.01 * torch.randn(k, k))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad (B, C, h*s, w*s) by s//2 before and s - s//2 after."""
        s = self.stride
        lo, hi = s // 2, s - s // 2
        mode = "reflect" if min(x.shape[-2:]) > hi else "replicate"
        return F.pad(x, (lo, hi, lo, hi), mode=mode)

    def _blocks(self, xp: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Padded (B, C, (h+1)*s, (w+1)*s) -> (B, C, h+1, s, w+1, s) blocks; window
        (i, j) is blocks (i..i+1, j..j+1)."""
        s = self.stride
        return xp.reshape(xp.shape[0], xp.shape[1], h + 1, s, w + 1, s)

    def attention(
        self,
        logits: torch.Tensor,
        grid: tuple[int, int],
        gen: torch.Generator | None = None,
        logit_mask: float = 0.0,
    ) -> torch.Tensor:
        """Padded (B, 1, (h+1)*s, (w+1)*s) pixel logits -> (B, h, w, 2, s, 2, s) weights."""
        h, w = grid
        s = self.stride
        bsz = logits.shape[0]
        lb = self._blocks(logits, h, w)[:, 0]  # (B, h+1, s, w+1, s)
        lwin = torch.stack(
            [torch.stack([lb[:, a : a + h, :, b : b + w] for b in (0, 1)], 0) for a in (0, 1)], 0
        )
        # (2a, 2b, B, h, s, w, s) -> (B, h, w, a, u, b, v): offset (a*s + u, b*s + v)
        lwin = lwin.permute(2, 3, 5, 0, 4, 1, 6).reshape(bsz, h, w, 4 * s * s)
        if logit_mask > 0:
            u = torch.rand((bsz, h, w, 1), generator=gen, device=logits.device)
            keep = (u >= logit_mask).float()
            lwin = lwin * keep
        attn = torch.softmax(lwin * self.w.reshape(-1) + self.b.reshape(-1), dim=-1)
        return attn.reshape(bsz, h, w, 2, s, 2, s)

    def pool(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Pool padded blurred maps (B, C, (h+1)*s, (w+1)*s) with window weights -> (B, C, h, w)."""
        bsz, h, w, _, s, _, _ = attn.shape
        blocks = self._blocks(x, h, w)  # (B, C, h+1, s, w+1, s)
        # weights per (a, b) placed on the blocks they read: block (i + a, j + b)
        wts = attn.new_zeros((bsz, 2, 2, h + 1, s, w + 1, s))
        for a in (0, 1):
            for b in (0, 1):
                wab = attn[:, :, :, a, :, b, :].permute(0, 1, 3, 2, 4)
                wts[:, a, b, a : a + h, :, b : b + w, :] = wab
        part = torch.einsum("bxyIuJv,bcIuJv->bxycIJ", wts, blocks)  # one pass over the map
        return sum(part[:, a, b, :, a : a + h, b : b + w] for a in (0, 1) for b in (0, 1))

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        gen: torch.Generator | None = None,
        logit_mask: float = 0.0,
    ) -> torch.Tensor:
        """Blur (B, C, h*s, w*s) and pool it to (B, C, h, w) (reference path)."""
        blurred = self.pad(_gaussian_blur(x))
        logits = torch.einsum("bchw,c->bhw", blurred, self.attn.weight[0])[:, None] + self.attn.bias
        return self.pool(blurred, self.attention(logits, grid, gen, logit_mask))


# --------------------------------------------------------------------------- jitter


def _mirror(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reflect (without repeating the edge) any integer index into [0, n)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx > n - 1, period - idx, idx)


def _axis_taps(
    n: int, pad: int, zoom: float, offset: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 (into the unpadded axis) and weight of i1 for one view axis.

    Matches FeatUp's ``apply_jitter``: reflect pad by ``pad``, bilinear zoom by
    ``zoom`` (``F.interpolate(scale_factor=zoom)``, align_corners=False), crop ``n``
    samples from ``offset``, optionally flipped.
    """
    r = torch.arange(n, dtype=torch.float64) + offset
    src = ((r + 0.5) / zoom - 0.5).clamp(min=0) if zoom != 1.0 else r
    npad = n + 2 * pad
    i0 = src.floor().long().clamp(max=npad - 1)
    i1 = (i0 + 1).clamp(max=npad - 1)
    frac = (src - i0).clamp(0, 1).float()
    i0, i1 = _mirror(i0 - pad, n), _mirror(i1 - pad, n)
    if flip:
        i0, i1, frac = i0.flip(0), i1.flip(0), frac.flip(0)
    return i0, i1, frac


@dataclass
class Jitter:
    """One view's transform: zoom, crop offsets (rows, cols) and horizontal flip."""

    zoom: float
    dy: int
    dx: int
    flip: bool


def sample_jitter(size: tuple[int, int], cfg: ImplicitConfig, gen: torch.Generator) -> Jitter:
    """FeatUp's ``sample_transform``: flip half the time, zoom in [1, max_zoom] half the
    time, crop offset uniform over the zoomed, padded view."""
    h, w = size
    u = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
    flip = cfg.flips and u[0] > 0.5
    zoom = u[2] * (cfg.max_zoom - 1) + 1 if u[1] > 0.5 else 1.0
    span_h = int((h + 2 * cfg.max_pad) * zoom) - h + 1
    span_w = int((w + 2 * cfg.max_pad) * zoom) - w + 1
    dy = int(torch.randint(0, span_h, (), generator=gen))
    dx = int(torch.randint(0, span_w, (), generator=gen))
    return Jitter(float(zoom), dy, dx, bool(flip))


def window_origins(
    n: int, grid: tuple[int, int], cells: tuple[int, int], gen: torch.Generator
) -> list[tuple[int, int]]:
    """Top-left cells of ``n`` random (kh, kw) windows in an (h, w) grid.

    A window starts anywhere it would overlap the grid and is then clamped inside, so
    border cells are covered nearly as often as central ones (uniform starts in
    [0, h - kh] cover a corner cell in only 1 of h - kh + 1 windows, which left the
    borders of a fit untrained).
    """
    (h, w), (kh, kw) = grid, cells
    oy = torch.randint(1 - kh, h, (n,), generator=gen).clamp(0, h - kh).tolist()
    ox = torch.randint(1 - kw, w, (n,), generator=gen).clamp(0, w - kw).tolist()
    return list(zip(oy, ox))


class _Taps:
    def __init__(self, j: Jitter, size: tuple[int, int], pad: int, device):
        h, w = size
        self.rows = tuple(t.to(device) for t in _axis_taps(h, pad, j.zoom, j.dy, False))
        self.cols = tuple(t.to(device) for t in _axis_taps(w, pad, j.zoom, j.dx, j.flip))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply to (B, C, H, W) -> (B, C, H, W)."""
        i0, i1, fy = self.rows
        x = x[:, :, i0] * (1 - fy)[:, None] + x[:, :, i1] * fy[:, None]
        j0, j1, fx = self.cols
        return x[..., j0] * (1 - fx) + x[..., j1] * fx


@functools.lru_cache(maxsize=16)
def _blur_matrix(n: int) -> torch.Tensor:
    """(n, n) matrix of the 5-tap Gaussian (sigma 1) with reflect border, one axis."""
    t = torch.arange(5, dtype=torch.float64) - 2
    k = torch.exp(-(t**2) / 2)
    k = k / k.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    r = torch.arange(n)
    for o in range(5):
        m.index_put_((r, _mirror(r + o - 2, n)), k[o].expand(n), accumulate=True)
    return m


def _support(m: torch.Tensor) -> tuple[int, int]:
    """First and one-past-last column of ``m`` (R, N) holding a nonzero."""
    nz = torch.nonzero(m.abs().sum(0)).flatten()
    return int(nz[0]), int(nz[-1]) + 1


def _tap_matrix(i0: torch.Tensor, i1: torch.Tensor, frac: torch.Tensor, n: int) -> torch.Tensor:
    m = torch.zeros(len(i0), n, dtype=torch.float64)
    r = torch.arange(len(i0))
    m.index_put_((r, i0), 1 - frac.double(), accumulate=True)
    m.index_put_((r, i1), frac.double(), accumulate=True)
    return m


class ViewOps:
    """Per-axis matrices of blur(jitter(.)) for a batch of views, cut to cell windows.

    Jitter and blur act on rows and columns separately, so ``blur(jitter(x))`` is
    ``Ty @ x @ Tx^T`` with ``Ty = By @ Jy`` and ``Tx = Bx @ Jx``: matrix products
    instead of padding, zooming and convolving a 129-channel map per view (and
    :meth:`pool` goes further: it never forms the views). Only the rows and columns
    the attention windows of the cells
    ``[i0, i0 + cells[0]) x [j0, j0 + cells[1])`` read are produced, including the
    stride/2 reflect margin of the downsampler (rows ``i0*s - s//2`` to
    ``(i0 + kh)*s + s - s//2``, mirrored at the view's border), so the output is
    (B, C, (kh + 1) * s, (kw + 1) * s) and the downsampler needs no padding.
    """

    def __init__(
        self,
        jitters: list[Jitter],
        size: tuple[int, int],
        pad: int,
        device,
        stride: int,
        cells: tuple[int, int],
        origins: list[tuple[int, int]] | None = None,
    ):
        h, w = size
        s = stride
        lo, hi = s // 2, s - s // 2
        bh, bw = _blur_matrix(h), _blur_matrix(w)
        origins = origins or [(0, 0)] * len(jitters)
        ty, tx = [], []
        for j, (i0, j0) in zip(jitters, origins):
            my = bh @ _tap_matrix(*_axis_taps(h, pad, j.zoom, j.dy, False), h)
            mx = bw @ _tap_matrix(*_axis_taps(w, pad, j.zoom, j.dx, j.flip), w)
            ry = _mirror(torch.arange(i0 * s - lo, (i0 + cells[0]) * s + hi), h)
            rx = _mirror(torch.arange(j0 * s - lo, (j0 + cells[1]) * s + hi), w)
            ty.append(my[ry])
            tx.append(mx[rx])
        self.cells = tuple(cells)
        self.stride = s
        self.origins = list(origins)
        self.ty = torch.stack(ty).float().to(device)  # (B, R, H)
        self.txt = torch.stack(tx).transpose(1, 2).float().to(device)  # (B, W, Cols)
        # For pooling: each view reads only a band of source rows and columns. Keep the
        # row operator on that band, and the column operator per cell column (the 2s
        # columns of its windows) on its band, so pool() never forms the jittered view.
        self.row_spans, self.col_spans, self.ty_band, self.tx_cells = [], [], [], []
        for my, mx in zip(ty, tx):
            (a, e), (a2, e2) = _support(my), _support(mx)
            self.row_spans.append((a, e))
            self.col_spans.append((a2, e2))
            self.ty_band.append(my[:, a:e].float().to(device))  # (R, Hs)
            cells_x = mx[:, a2:e2].unfold(0, 2 * s, s).transpose(1, 2)  # (kw, 2s, Ws)
            self.tx_cells.append(cells_x.float().contiguous().to(device))

    def __len__(self) -> int:
        return self.ty.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(1 or B, C, H, W) -> (B, C, R, Cols): the blurred jittered views. The fit
        uses it on the one-channel attention logits; :meth:`pool` handles the features."""
        return torch.matmul(torch.matmul(self.ty[:, None], x), self.txt[:, None])

    def pool(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Attention-pool the blurred jittered views of one channels-last map ``x``
        (H, W, C) with window weights ``attn`` (B, kh, kw, 2, s, 2, s) -> (B, C, kh, kw).

        Equals ``AttentionDownsampler.pool(self(x), attn)`` with ``x`` channels-first,
        without forming the (B, C, R, Cols) views: per view, the rows of its source band
        are jittered (one GEMM over (Hs, Ws*C)), and each window's weights are pulled
        back through the column operator onto the band's columns, so the pooling is a
        product with the jittered rows.
        """
        h, w, c = x.shape
        kh, kw = self.cells
        s = self.stride
        bands = _BandRows.apply(x.reshape(h, w * c), self, c)
        out = []
        for b in range(len(self)):
            ws = self.col_spans[b][1] - self.col_spans[b][0]
            rows = bands[b].view(kh + 1, s * ws, c)
            wts = attn[b].reshape(kh, kw, 2 * s, 2 * s) @ self.tx_cells[b]  # (kh, kw, 2s, Ws)
            wts = wts.view(kh, kw, 2, s * ws)
            out.append(torch.bmm(wts[:, :, 0], rows[:kh]) + torch.bmm(wts[:, :, 1], rows[1:]))
        return torch.stack(out).permute(0, 3, 1, 2)

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """The windows' cells of grid maps (B, C, h, w) -> (B, C, kh, kw)."""
        kh, kw = self.cells
        return torch.stack(
            [t[b, :, i : i + kh, j : j + kw] for b, (i, j) in enumerate(self.origins)]
        )


class _BandRows(torch.autograd.Function):
    """Each view's row operator on its band of a (H, W*C) map: ``ty_band[b] @
    x[rows_b, cols_b * C]`` for every view b. The backward pass accumulates all views
    into one gradient buffer (autograd's slices would zero a full-size buffer per view)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, ops: ViewOps, c: int) -> tuple[torch.Tensor, ...]:
        ctx.ops, ctx.c, ctx.shape = ops, c, flat.shape
        return tuple(
            ty @ flat[a:e, a2 * c : e2 * c]
            for ty, (a, e), (a2, e2) in zip(ops.ty_band, ops.row_spans, ops.col_spans)
        )

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        ops, c = ctx.ops, ctx.c
        out = grads[0].new_zeros(ctx.shape)
        for g, ty, (a, e), (a2, e2) in zip(grads, ops.ty_band, ops.row_spans, ops.col_spans):
            if g is not None:
                out[a:e, a2 * c : e2 * c].addmm_(ty.T, g)
        return out, None, None


# --------------------------------------------------------------------------- result


class ImplicitFeatures:
    """A fitted implicit model: features of one image at any resolution.

    ``render(size)`` gives (1, C, H, W) float32 backbone-dimension features covering the
    whole image (the fitted one, without stride padding) at ``size`` = (H, W).
    """

    def __init__(
        self,
        net: ImplicitNet,
        components: torch.Tensor,
        mean: torch.Tensor,
        colour_range: torch.Tensor,
        image: torch.Tensor,
        fit_size: tuple[int, int],
        content_size: tuple[int, int],
        original_size: tuple[int, int],
        info: dict,
    ):
        self.net = net.eval()
        self.components = components  # (P, C)
        self.mean = mean  # (C,)
        self.colour_range = colour_range  # (2, 3): min, max of the normalised fit image
        self.image = image  # (1, 3, Hc, Wc) normalised colours of the fitted content
        self.fit_size = tuple(int(v) for v in fit_size)
        self.content_size = tuple(int(v) for v in content_size)
        self.original_size = tuple(int(v) for v in original_size)
        self.info = dict(info)

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def device(self) -> torch.device:
        return self.components.device

    def to(self, device: str | torch.device) -> ImplicitFeatures:
        dev = resolve_device(device)
        self.net.to(dev)
        self.components, self.mean = self.components.to(dev), self.mean.to(dev)
        self.colour_range, self.image = self.colour_range.to(dev), self.image.to(dev)
        return self

    def _scaled_colour(self, image: torch.Tensor) -> torch.Tensor:
        lo, hi = self.colour_range[0], self.colour_range[1]
        return (image - lo[:, None, None]) / (hi - lo).clamp_min(1e-4)[:, None, None] - 0.5

    def _coords(self, size: tuple[int, int], rows: slice) -> torch.Tensor:
        """Model coordinates of render pixels ``rows`` of a ``size`` render: (R*W, 2)."""
        (hh, ww), (hf, wf), (hc, wc) = size, self.fit_size, self.content_size
        dev = self.device
        r = torch.arange(rows.start, rows.stop, device=dev, dtype=torch.float64)
        c = torch.arange(ww, device=dev, dtype=torch.float64)
        # render pixel -> fit-image pixel (pixel centres aligned over the content) -> [-1, 1]
        fy = (r + 0.5) * hc / hh - 0.5
        fx = (c + 0.5) * wc / ww - 0.5
        y = -1 + 2 * fy / max(hf - 1, 1)
        x = -1 + 2 * fx / max(wf - 1, 1)
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=1)

    def tile_rows(self, width: int, budget_bytes: int = 128 << 20) -> int:
        """Rows per render tile so intermediates stay near ``budget_bytes``."""
        per_px = 4 * (2 * 5 * self.net.n_freqs * 4 + 128 * 6 + 2 * self.dim)
        return max(1, int(budget_bytes // (per_px * max(1, width))))

    @torch.no_grad()
    def render(
        self,
        size: tuple[int, int] | None = None,
        rows: slice | None = None,
        image: torch.Tensor | None = None,
        budget_bytes: int = 128 << 20,
        space: str = "features",
    ) -> torch.Tensor:
        """Features at ``size`` = (H, W) (default: the original image size).

        ``rows`` renders only those output rows; ``image`` (1, 3, H, W), normalised,
        supplies the colours at the render size (default: the fitted image resized).
        Rendered in row tiles of about ``budget_bytes``. Returns (1, C, R, W) float32,
        or with ``space="pca"`` the network's (1, P, R, W) PCA coordinates ``z``
        (features = ``components.T @ z + mean``).
        """
        if space not in ("features", "pca"):
            raise ValueError(f"space must be 'features' or 'pca', got {space!r}")
        pca = space == "pca"
        size = self.original_size if size is None else (int(size[0]), int(size[1]))
        if len(size) != 2 or size[0] < 1 or size[1] < 1:
            raise ValueError(f"render size must be (H, W) with H, W >= 1, got {size!r}")
        hh, ww = size
        r0, r1, step = (rows or slice(0, hh)).indices(hh)
        if step != 1:
            raise ValueError("render rows must be a contiguous slice (step 1)")
        if image is not None:
            if image.ndim != 4 or image.shape[:2] != (1, 3) or tuple(image.shape[-2:]) != size:
                raise ValueError(
                    f"render image must be (1, 3, {hh}, {ww}) to match the render size, "
                    f"got {tuple(image.shape)}"
                )
        p = int(self.components.shape[0])
        out = torch.empty((1, p if pca else self.dim, r1 - r0, ww), device=self.device)
        n = self.tile_rows(ww, budget_bytes)
        for a in range(r0, r1, n):
            b = min(r1, a + n)
            if image is not None:
                col = image[:, :, a:b].to(self.device, torch.float32)
            else:
                from .upsamplers.base import resize_bilinear

                col = resize_bilinear(self.image, size, slice(a, b))
            col = self._scaled_colour(col[0]).reshape(3, -1).T
            e = ImplicitNet.encode(self._coords(size, slice(a, b)), col, self.net.n_freqs)
            z = self.net(e)  # (N, P)
            f = z if pca else z @ self.components + self.mean  # (N, P or C)
            out[0, :, a - r0 : b - r0] = f.T.reshape(out.shape[1], b - a, ww)
        return out

    def state(self) -> dict:
        """A plain dict of tensors, numbers and strings (torch.save-able, loadable with
        ``weights_only=True``)."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "n_freqs": int(self.net.n_freqs),
            "components": self.components.cpu(),
            "mean": self.mean.cpu(),
            "colour_range": self.colour_range.cpu(),
            # float32: the e^10 colour frequencies make features sensitive to rounding
            "image": self.image.cpu(),
            "fit_size": list(self.fit_size),
            "content_size": list(self.content_size),
            "original_size": list(self.original_size),
            "info": self.info,
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write to ``path`` (via a temporary name, then rename)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def from_state(cls, st: dict, device: str | torch.device = "cpu") -> ImplicitFeatures:
        if not isinstance(st, dict) or st.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file (no 'format': {FORMAT!r} entry)")
        if int(st.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"file format version {st['format_version']} is newer than this "
                f"napari-featup reads ({FORMAT_VERSION}); update napari-featup"
            )
        comps = st["components"].float()
        net = ImplicitNet(int(st["n_freqs"]), int(comps.shape[0]))
        net.load_state_dict(st["net"])
        dev = resolve_device(device)
        return cls(
            net,
            comps,
            st["mean"].float(),
            st["colour_range"].float(),
            st["image"].float(),
            tuple(st["fit_size"]),
            tuple(st["content_size"]),
            tuple(st["original_size"]),
            dict(st.get("info", {})),
        ).to(dev)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ImplicitFeatures:
        """Read a file written by :meth:`save` (no arbitrary unpickling)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"implicit features file {str(path)!r} does not exist")
        try:
            st = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several types here
            raise ValueError(f"{path} is not a readable {FORMAT} file: {exc}") from exc
        return cls.from_state(st, device)


# --------------------------------------------------------------------------- fitting


def fit_size_for(size: tuple[int, int], stride: int, max_pixels: int) -> tuple[int, int]:
    """Content size (H, W) an image of ``size`` is fitted at: the image itself when
    H*W <= ``max_pixels``, else scaled down (aspect kept), at least one stride."""
    h, w = size
    if h * w <= max_pixels:
        return h, w
    t = math.sqrt(max_pixels / (h * w))
    return max(stride, int(h * t)), max(stride, int(w * t))


class ImplicitFitter:
    """The state of one fit; :func:`iter_fit_implicit` drives it.

    ``image`` (1, 3, H, W) ImageNet-normalised (not padded). The fitter pads it to the
    backbone stride (reflect), or first scales it down to ``cfg.max_fit_pixels``.
    """

    def __init__(
        self,
        image: torch.Tensor,
        backbone: Backbone,
        cfg: ImplicitConfig,
        seed: int = 0,
        use_norm: bool = True,
    ):
        self.bb = backbone
        self.cfg = cfg
        self.seed = int(seed)
        self.use_norm = bool(use_norm)
        self.device = backbone.device
        s = backbone.patch_size
        self.original_size = tuple(int(v) for v in image.shape[-2:])
        self.content_size = fit_size_for(self.original_size, s, cfg.max_fit_pixels)
        # a normal tensor even when called under inference_mode (the fit needs autograd)
        with torch.inference_mode(False):
            img = image.to(self.device, torch.float32).clone()
            if self.content_size != self.original_size:
                img = F.interpolate(
                    img, self.content_size, mode="bilinear", align_corners=False, antialias=True
                )
            self.content = img
            self.fit_image = pad_to_stride(img, s)
        self.fit_size = tuple(int(v) for v in self.fit_image.shape[-2:])
        self.grid = (self.fit_size[0] // s, self.fit_size[1] // s)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.dev_gen = (
            self.gen
            if self.device.type == "cpu"
            else torch.Generator(self.device).manual_seed(self.seed)
        )
        self.jitters: list[Jitter] = []
        self.targets: torch.Tensor | None = None  # (V, P, h, w) PCA space
        self.components = self.mean = None
        self.step_count = 0
        self.losses: list[float] = []
        self._built = False

    # -- views --------------------------------------------------------------------

    @torch.no_grad()
    def featurize(self, x: torch.Tensor) -> torch.Tensor:
        f = self.bb(x.to(self.bb.dtype)).float()
        return channel_norm(f) if self.use_norm else f

    def make_jitters(self, n: int, gen: torch.Generator | None = None) -> list[Jitter]:
        return [sample_jitter(self.fit_size, self.cfg, gen or self.gen) for _ in range(n)]

    def taps(self, j: Jitter) -> _Taps:
        return _Taps(j, self.fit_size, self.cfg.max_pad, self.device)

    @torch.no_grad()
    def view_features(self, jitters: list[Jitter]) -> torch.Tensor:
        """Backbone features (V, C, h, w) of the image under each jitter."""
        views = torch.cat([self.taps(j)(self.fit_image) for j in jitters])
        return self.featurize(views)

    def iter_views(self) -> Iterator[int]:
        """Featurise ``cfg.views`` jittered views, yielding the count done."""
        cfg = self.cfg
        self.jitters = self.make_jitters(cfg.views)
        feats = []
        for a in range(0, cfg.views, cfg.view_batch):
            feats.append(self.view_features(self.jitters[a : a + cfg.view_batch]).cpu())
            yield min(cfg.views, a + cfg.view_batch)
        with torch.inference_mode(False):
            # (V, C, h, w) on CPU: 3000 x 384 x 16 x 16 floats = 1.2 GB for FeatUp's settings
            raw = torch.cat(feats).clone()
            self._fit_pca(raw[: cfg.pca_views])
            self.targets = self.project(raw).to(self.device)
            self.raw_dim = raw.shape[1]

    @torch.no_grad()
    def _fit_pca(self, feats: torch.Tensor) -> None:
        c = feats.shape[1]
        x = feats.permute(0, 2, 3, 1).reshape(-1, c).double()
        mean = x.mean(0)
        p = min(self.cfg.proj_dim, c)
        if p == c:
            comps = torch.eye(c, dtype=torch.float64)
        else:
            cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)
            evals, evecs = torch.linalg.eigh(cov)
            comps = evecs[:, torch.argsort(evals, descending=True)[:p]].T
            # a fixed sign per component, so the basis does not depend on the solver
            sign = torch.sign(comps[torch.arange(p), comps.abs().argmax(1)])
            comps = comps * sign[:, None]
        self.components = comps.float().to(self.device)  # (P, C)
        self.mean = mean.float().to(self.device)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(V, C, h, w) backbone features -> (V, P, h, w) PCA coordinates."""
        comps, mean = self.components.to(feats.device), self.mean.to(feats.device)
        return torch.einsum("vchw,pc->vphw", feats - mean[:, None, None], comps)

    # -- model --------------------------------------------------------------------

    def build(self) -> None:
        with torch.inference_mode(False):
            self._build()

    def _build(self) -> None:
        cfg = self.cfg
        p = int(self.components.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = ImplicitNet(cfg.n_freqs, p).to(self.device)
            self.down = AttentionDownsampler(p + 1, self.bb.patch_size).to(self.device)
            self.scale_net = nn.Linear(p, 1).to(self.device)
            with torch.no_grad():
                self.scale_net.weight.mul_(0.1)
                self.scale_net.bias.mul_(0.1)
        params = [*self.net.parameters(), *self.down.parameters(), *self.scale_net.parameters()]
        self.optim = torch.optim.NAdam(params, lr=cfg.lr)
        hf, wf = self.fit_size
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, hf, dtype=torch.float64, device=self.device),
            torch.linspace(-1, 1, wf, dtype=torch.float64, device=self.device),
            indexing="ij",
        )
        coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
        img = self.fit_image[0]
        lo = img.reshape(3, -1).min(1).values
        hi = img.reshape(3, -1).max(1).values
        self.colour_range = torch.stack([lo, hi])
        scaled = (img - lo[:, None, None]) / (hi - lo).clamp_min(1e-4)[:, None, None] - 0.5
        self.encoded = ImplicitNet.encode(coords, scaled.reshape(3, -1).T, cfg.n_freqs)
        self._built = True

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if cfg.warmup and step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
            return cfg.lr * (cfg.lr_floor + (1 - cfg.lr_floor) * cos)
        return cfg.lr

    def view_ops(self, jitters: list[Jitter], random_windows: bool = False) -> ViewOps:
        """Operators for ``jitters``: the whole grid, or with ``random_windows`` and
        ``cfg.cells`` > 0 a random window of cells per view (cheaper steps)."""
        h, w = self.grid
        k = self.cfg.cells
        if random_windows and k > 0 and (k < h or k < w):
            kh, kw = min(k, h), min(k, w)
            origins = window_origins(len(jitters), (h, w), (kh, kw), self.gen)
            return ViewOps(
                jitters,
                self.fit_size,
                self.cfg.max_pad,
                self.device,
                self.bb.patch_size,
                (kh, kw),
                origins,
            )
        return ViewOps(
            jitters, self.fit_size, self.cfg.max_pad, self.device, self.bb.patch_size, (h, w)
        )

    def objective(
        self, ops: ViewOps, targets: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, dict]:
        """FeatUp's loss for the views of ``ops`` against ``targets`` (B, P, h, w)
        (cropped to the operators' cell windows here)."""
        cfg = self.cfg
        self.net.train(train)
        self.down.train(train)
        hf, wf = self.fit_size
        z = self.net(self.encoded, self.dev_gen, cfg.dropout if train else 0.0)  # (N, P)
        z_mag = z.norm(dim=1, keepdim=True)
        both = torch.cat([z_mag, z], dim=1)  # (N, P+1), channels last
        hr = z.T.reshape(1, z.shape[1], hf, wf)
        hr_mag = z_mag.view(1, 1, hf, wf)
        targets = ops.crop(targets)
        # Attention logits are linear in the blurred view, so take them on one channel
        # before jittering. Training drops input channels per view (FeatUp drops single
        # entries; per-channel keeps this a one-channel product).
        a = self.down.attn.weight[0]
        bsz = len(ops)
        p_drop = cfg.attn_dropout if train else 0.0
        m = _dropout_mask((bsz, a.shape[0]), p_drop, self.dev_gen, a.device)
        av = a.expand(bsz, -1) if m is None else a * m
        logit_map = (both @ av.T).T.reshape(bsz, 1, hf, wf)
        logits = ops(logit_map) + self.down.attn.bias
        attn = self.down.attention(
            logits, ops.cells, self.dev_gen, cfg.logit_mask if train else 0.0
        )
        down = ops.pool(both.view(hf, wf, -1), attn)  # blurred, jittered, pooled views
        mag_d, out = down[:, :1], down[:, 1:]
        log_s = self.scale_net(targets.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scales = torch.exp(log_s + 0.1).clamp_min(1e-4)
        rec = ((out - targets).square() / (2 * scales**2) + scales.log()).mean()
        loss = rec
        terms = {"rec": float(rec.detach())}
        if cfg.mag_weight > 0:
            mag = (mag_d - targets.norm(dim=1, keepdim=True)).square().mean()
            loss = loss + cfg.mag_weight * mag
            terms["mag"] = float(mag.detach())
        if cfg.mag_tv_weight > 0:
            tv = (
                (hr_mag[..., 1:, :] - hr_mag[..., :-1, :]).square().sum()
                + (hr_mag[..., 1:] - hr_mag[..., :-1]).square().sum()
            ) / hr_mag.numel()
            loss = loss + cfg.mag_tv_weight * tv
            terms["mag_tv"] = float(tv.detach())
        if cfg.blur_pin > 0:
            pin = (_gaussian_blur(hr) - hr).square().mean()
            loss = loss + cfg.blur_pin * pin
            terms["blur_pin"] = float(pin.detach())
        # feature error of the downsampled prediction (PCA space), for reports
        terms["mse"] = float((out - targets).square().mean().detach())
        return loss, terms

    def step(self) -> float:
        """One optimiser step on ``cfg.batch`` random views; returns the loss."""
        if not self._built:
            self.build()
        with torch.inference_mode(False), torch.enable_grad():
            return self._step()

    def _step(self) -> float:
        cfg = self.cfg
        for g in self.optim.param_groups:
            g["lr"] = self.lr_at(self.step_count)
        idx = torch.randint(0, self.targets.shape[0], (cfg.batch,), generator=self.gen).tolist()
        ops = self.view_ops([self.jitters[i] for i in idx], random_windows=True)
        loss, _ = self.objective(ops, self.targets[idx], train=True)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.step_count += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    @torch.no_grad()
    def evaluate(self, jitters: list[Jitter], raw_targets: torch.Tensor, chunk: int = 8) -> dict:
        """Eval-mode loss (no dropout) on held-out views with backbone features
        ``raw_targets`` (V, C, h, w); returns the loss and its terms (view-averaged)."""
        targets = self.project(raw_targets.to(self.device))
        acc: dict[str, float] = {}
        n = len(jitters)
        for a in range(0, n, chunk):
            js = jitters[a : a + chunk]
            loss, terms = self.objective(self.view_ops(js), targets[a : a + chunk], train=False)
            terms["loss"] = float(loss)
            for k, v in terms.items():
                acc[k] = acc.get(k, 0.0) + v * len(js) / n
        return acc

    def result(self) -> ImplicitFeatures:
        info = {
            "backbone": self.bb.name,
            "backbone_weights": str(self.bb.weights),
            "stride": int(self.bb.patch_size),
            "use_norm": self.use_norm,
            "seed": self.seed,
            "config": self.cfg.to_dict(),
            "steps_done": self.step_count,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": [round(v, 6) for v in self.losses[:: max(1, len(self.losses) // 200)]],
        }
        net = ImplicitNet(self.cfg.n_freqs, int(self.components.shape[0])).to(self.device)
        net.load_state_dict(self.net.state_dict())
        return ImplicitFeatures(
            net,
            self.components.clone(),
            self.mean.clone(),
            self.colour_range.clone(),
            self.content.clone(),
            self.fit_size,
            self.content_size,
            self.original_size,
            info,
        )


def _as_image_tensor(image: Any) -> torch.Tensor:
    """(1, 3, H, W) normalised tensor from a tensor or anything prepare_image takes."""
    if isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(
                "a tensor image must be ImageNet-normalised (3, H, W) or (1, 3, H, W), "
                f"got shape {tuple(image.shape)}; pass numpy arrays for raw images"
            )
        if not torch.is_floating_point(x) or not torch.isfinite(x).all():
            raise ValueError("a tensor image must be floating point and finite")
        return x.float()
    from .preprocess import normalize, prepare_image

    x01, _ = prepare_image(image)
    return normalize(torch.from_numpy(x01)[None])


def iter_fit_implicit(
    image: Any,
    backbone: str | Backbone,
    *,
    settings: str | ImplicitConfig = "fast",
    steps: int | None = None,
    views: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    weights: str = "pretrained",
    use_norm: bool = True,
    progress_every: int = 1,
    **options: Any,
) -> Generator[FitProgress, None, ImplicitFeatures]:
    """Fit FeatUp's implicit model to one image, yielding :class:`FitProgress`.

    ``image``: a numpy/dask image (anything :func:`~napari_featup.prepare_image` takes)
    or an ImageNet-normalised tensor (3, H, W) / (1, 3, H, W). ``backbone``: a
    :class:`Backbone` or a name (loaded with ``weights`` on ``device``). ``settings``:
    ``"fast"``, ``"preview"`` (a quick look) or ``"featup"`` (FeatUp's defaults) or an
    :class:`ImplicitConfig`;
    ``steps``, ``views``, ``lr`` and ``options`` (any :class:`ImplicitConfig` field)
    override it. ``seed`` makes the fit reproducible on a given device. ``use_norm``:
    fit to channel-normed features (FeatUp's default). Returns
    :class:`ImplicitFeatures` (as the generator's return value); stop iterating to cancel.
    """
    cfg = resolve_config(settings, steps=steps, views=views, lr=lr, **options)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    x = _as_image_tensor(image)
    if isinstance(backbone, Backbone):
        bb = backbone
    elif isinstance(backbone, str):
        bb = load_backbone(backbone, weights=weights, device=device)
    else:
        raise ValueError(f"backbone must be a name or a Backbone, got {type(backbone).__name__}")
    bb.check_size(*x.shape[-2:])
    fitter = ImplicitFitter(x, bb, cfg, seed=int(seed), use_norm=use_norm)
    total = cfg.views + cfg.steps
    yield FitProgress(0, total, float("nan"), "featurising jittered views")
    for done in fitter.iter_views():
        yield FitProgress(
            done, total, float("nan"), f"featurising jittered views ({done}/{cfg.views})"
        )
    fitter.build()
    every = max(1, int(progress_every))
    for i in range(cfg.steps):
        loss = fitter.step()
        if (i + 1) % every == 0 or i + 1 == cfg.steps:
            yield FitProgress(
                cfg.views + i + 1, total, loss, f"fitting step {i + 1}/{cfg.steps}, loss {loss:.4f}"
            )
    return fitter.result()


def fit_implicit(
    image: Any,
    backbone: str | Backbone,
    *,
    progress: Callable[[FitProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> ImplicitFeatures:
    """Run :func:`iter_fit_implicit` to the end (same arguments).

    ``progress`` is called with each :class:`FitProgress`; ``should_cancel`` is polled
    at each and raises :class:`~napari_featup.Cancelled` when it returns True.
    """
    return drive(iter_fit_implicit(image, backbone, **kwargs), progress, should_cancel)


__all__ = [
    "SETTINGS",
    "FitProgress",
    "ImplicitConfig",
    "ImplicitFeatures",
    "ImplicitFitter",
    "fit_implicit",
    "iter_fit_implicit",
    "resolve_config",
]
