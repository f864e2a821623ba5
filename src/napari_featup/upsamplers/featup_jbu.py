"""FeatUp's JBU stack in pure PyTorch: exact, tiled, and fast on CPU and GPU.

The module is state-dict compatible with the ``upsampler.*`` part of FeatUp's
Lightning checkpoints (``up1``..``up4`` joint bilateral layers, then
``x + 0.1 * conv1x1(x)``); see DESIGN.md for the maths it reproduces.

How it is evaluated (none of it changes the result beyond float rounding):

* Each layer's 7x7 per-pixel kernel acts on the *bicubic 2x upsample* of its source,
  reflect-padded by 3. Both steps are linear and act on rows and columns separately,
  so they are folded into the kernel: output pixel ``(2k+py, 2m+px)`` becomes a 7x7
  weighted sum of *source* pixels ``k-3..k+3, m-3..m+3`` (weights of taps that fall
  outside the grid are zero, their mass having been moved to the reflected and
  clamped pixels). The C-channel high-res source is never built.
* The folded kernels are applied as batched matrix products on channels-last data: a
  tile of 4 x 4 source positions (64 output pixels, all four parities) reads a 10 x 10
  source window, so ``(64, 100) @ (100, C)`` per tile runs in BLAS instead of 49
  passes of element-wise multiply-adds over C x H x W.
* The final ``x + 0.1 * conv1x1(x)``: its channel map commutes with the channel-shared
  layers, so it is applied on the low-res grid and only its bias at full resolution.
* The range kernel uses 49 shifted dot products of the 32-d embeddings (no unfold).
* Kernels depend on the image only, so :class:`JBUKernels` computes them once and
  applies them to any channel set (features, PCA projections, similarity queries).
* Rows are evaluated in bands with the exact halo each layer needs, so tiled output
  equals untiled output and memory follows the band, not the image.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as _weights
from ..ops import linear_taps, reflect_index
from ._registry import register_upsampler
from .base import Kernels, Upsampler


@dataclass(frozen=True)
class FeatUpJBUOptions:
    """``cache_mb``: MB of folded kernel weights kept between calls."""

    cache_mb: float = 512


OPTIONS = {"cache_mb": FeatUpJBUOptions.cache_mb}

RADIUS = 3
DIAMETER = 2 * RADIUS + 1
TAPS = DIAMETER * DIAMETER
KEY_DIM = 32

#: tile of source positions per matrix product (rows, cols): window (4+6) x (4+6)
_TILE = (4, 4)
#: source rows whose kernels are computed together: at most 32, fewer on wide grids so
#: a chunk's kernels stay near _CHUNK_BYTES (a power of two, fixed per layer and image)
_CHUNK_ROWS = 32
_CHUNK_BYTES = 8 << 20
#: bytes of the (rows, W, 7, 32) neighbour products computed in one op
_PIECE_BYTES = 4 << 20
#: per apply step: at most this many source rows, and about this many bytes of windows
_MAX_STEP_ROWS = 64
_STEP_BYTES = 8 << 20
#: forward() evaluates output rows in bands of about this many bytes (with halos)
_FORWARD_BAND_BYTES = 32 << 20

_BASE_URL = "https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/"

#: backbone -> the ``use_norm`` settings FeatUp published a JBU checkpoint for
FEATUP_CHECKPOINTS: dict[str, tuple[bool, ...]] = {
    "dino16": (True, False),
    "dinov2": (True, False),
    "clip": (True, False),
    "vit": (True, False),
    "resnet50": (True, False),
    "maskclip": (False,),
}


# ----------------------------------------------------------------------------- helpers


def _pool_axis(x: torch.Tensor, dim: int, out_n: int, idx: torch.Tensor) -> torch.Tensor:
    """``adaptive_avg_pool`` along ``dim`` to length ``out_n``, at output positions ``idx``.

    Same bins as ``F.adaptive_avg_pool2d`` (``[floor(i*n/o), ceil((i+1)*n/o))``), summed
    in float64 so any subset of rows is exact on its own (needed for tiling).
    """
    n = x.shape[dim]
    start = (idx * n) // out_n
    end = ((idx + 1) * n + out_n - 1) // out_n
    lo, hi = int(start.min()), int(end.max())
    part = x.narrow(dim, lo, hi - lo).double()
    shape = list(part.shape)
    shape[dim] = 1
    cs = torch.cat([part.new_zeros(shape), part.cumsum(dim)], dim)
    total = cs.index_select(dim, end - lo) - cs.index_select(dim, start - lo)
    view = [1] * x.dim()
    view[dim] = -1
    return (total / (end - start).to(total).view(view)).to(x.dtype)


def _bicubic_taps(n_out: int, n_in: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices (N, 4) and weights (N, 4) of bicubic resizing n_in -> n_out.

    Matches ``F.interpolate(mode="bicubic", align_corners=False)`` (A = -0.75, source
    indices clamped to the edge) at output positions ``idx``.
    """
    a = -0.75
    real = (idx.double() + 0.5) * (n_in / n_out) - 0.5
    base = real.floor()
    t = real - base

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)
    src = (base.long()[:, None] - 1 + torch.arange(4, device=idx.device)).clamp(0, n_in - 1)
    return src, w


def _fold_matrix(n_hr: int, y0: int, y1: int, device) -> torch.Tensor:
    """(y1-y0, 7 taps, 7 source offsets): reflect pad + bicubic 2x folded, per hr row.

    Entry ``[y, i, d]`` is the weight of source row ``y//2 + d - 3`` in the padded,
    upsampled row the kernel's tap ``i`` reads for output row ``y``.
    """
    n_src = n_hr // 2
    ys = torch.arange(y0, y1, device=device)
    rows = reflect_index(ys[:, None] + torch.arange(-RADIUS, RADIUS + 1, device=device), n_hr)
    src, w = _bicubic_taps(n_hr, n_src, rows.reshape(-1))
    d = src.view(len(ys), DIAMETER, 4) - (ys // 2)[:, None, None] + RADIUS
    if bool(((d < 0) | (d >= DIAMETER)).any()):  # cannot happen for exact 2x; guard the maths
        raise AssertionError("JBU fold: source tap outside the 7-wide window")
    out = torch.zeros(len(ys), DIAMETER, DIAMETER, dtype=torch.float64, device=device)
    out.scatter_add_(2, d, w.view(len(ys), DIAMETER, 4))
    return out.float()


@functools.lru_cache(maxsize=8)
def _tile_scatter_index(th: int, tw: int, device) -> torch.Tensor:
    """Flat positions in an (out, window) tile matrix of the folded taps.

    Values come ordered (row, col, py, px, a, b) over a tile of th x tw source
    positions; the window is (th+6) x (tw+6) source pixels, the outputs 2th x 2tw.
    """
    lk, lm, py, px, a, b = torch.meshgrid(
        *(torch.arange(n, device=device) for n in (th, tw, 2, 2, DIAMETER, DIAMETER)),
        indexing="ij",
    )
    win = (lk + a) * (tw + 2 * RADIUS) + (lm + b)
    out = (2 * lk + py) * (2 * tw) + (2 * lm + px)
    return (out * ((th + 2 * RADIUS) * (tw + 2 * RADIUS)) + win).reshape(-1)


# ----------------------------------------------------------------------------- modules


class JBULayer(nn.Module):
    """One 2x joint bilateral upsampling layer (FeatUp's ``JBULearnedRange``).

    Parameter names and shapes match FeatUp's so its state dicts load unchanged.
    ``forward(source (B,C,h,w), guidance (B,3,2h,2w)) -> (B,C,2h,2w)``.
    """

    def __init__(self, guidance_dim: int = 3, key_dim: int = KEY_DIM):
        super().__init__()
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + TAPS, TAPS, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(TAPS, TAPS, 1),
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def spatial_kernel(self) -> torch.Tensor:
        """(49,) Gaussian over the tap offsets ``linspace(-1, 1, 7)``; tap p = 7*i + j."""
        d = torch.linspace(-1, 1, DIAMETER, device=self.sigma_spatial.device)
        sq = d[:, None] ** 2 + d[None, :] ** 2
        return torch.exp(-sq / (2 * self.sigma_spatial.float() ** 2)).reshape(TAPS)

    def _conv(self, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        # eval-mode Sequential(conv, GELU, dropout, conv) in float32 whatever the module dtype
        c0, c1 = seq[0], seq[3]
        x = F.conv2d(x, c0.weight.float(), c0.bias.float())
        x = F.gelu(x)
        return F.conv2d(x, c1.weight.float(), c1.bias.float())

    def tap_kernels(self, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel kernels (B, 49, R, W) from guidance reflect-padded by 3: (B, 3, R+6, W+6).

        Softmax range kernel times the spatial Gaussian, renormalised, plus
        ``0.1 * fixup_proj``, exactly as FeatUp; computed in float32.
        """
        guide = guide.float()
        r, w = guide.shape[-2] - 2 * RADIUS, guide.shape[-1] - 2 * RADIUS
        emb = self._conv(self.range_proj, guide)  # (B, 32, R+6, W+6)
        emb = emb.permute(0, 2, 3, 1).contiguous()  # channels last: the dot products are contiguous
        centre = emb[:, RADIUS : RADIUS + r, RADIUS : RADIUS + w]
        bsz, _, wp, kd = emb.shape
        logits = emb.new_empty(bsz, DIAMETER, DIAMETER, r, w)
        piece = max(1, _PIECE_BYTES // (bsz * w * DIAMETER * kd * 4))
        for i in range(DIAMETER):
            for p0 in range(0, r, piece):
                p1 = min(r, p0 + piece)
                # the 7 column neighbours of every pixel as a strided view (no copy), then
                # one multiply-reduce per tap row: few large ops rather than 49 small ones
                nb = emb.as_strided(
                    (bsz, p1 - p0, w, DIAMETER, kd),
                    (emb.stride(0), wp * kd, kd, kd, 1),
                    emb.storage_offset() + (i + p0) * wp * kd,
                )
                prod = (nb * centre[:, p0:p1, :, None]).sum(-1)
                logits[:, i, :, p0:p1] = prod.permute(0, 3, 1, 2)
        logits = logits.view(bsz, TAPS, r, w)
        del emb, centre
        temp = self.range_temp.float().exp().clamp(1e-4, 1e4)
        logits.mul_(temp)
        k = torch.softmax(logits, dim=1)
        del logits
        k.mul_(self.spatial_kernel().view(1, TAPS, 1, 1))
        k.div_(k.sum(1, keepdim=True).clamp(1e-7))
        fix = self._conv(
            self.fixup_proj, torch.cat([k, guide[..., RADIUS : RADIUS + r, RADIUS : RADIUS + w]], 1)
        )
        return k.add_(fix, alpha=0.1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        return reference_layer(self, source, guidance)


@register_upsampler(
    "featup-jbu",
    description="FeatUp JBU stack (16x, pretrained per backbone), pure PyTorch",
    options=FeatUpJBUOptions,
    takes_weights=True,
    default_use_norm=True,
)
class FeatUpJBU(Upsampler):
    """FeatUp's JBU stack: four 2x JBU layers then ``x + 0.1 * conv1x1(x)``; 16x output.

    Loads FeatUp's ``upsampler.*`` weights (:func:`load_featup_checkpoint`). Channel-
    linear: :meth:`kernels` gives reusable per-image kernels. ``cache_mb``: folded
    kernels of an image are kept when they fit (else recomputed per tile).
    """

    linear = True
    tileable = True

    def __init__(self, dim: int, use_norm: bool = True, cache_mb: float = OPTIONS["cache_mb"]):
        super().__init__()
        self.dim = int(dim)
        self.use_norm = bool(use_norm)
        self.cache_mb = cache_mb
        self.up1, self.up2, self.up3, self.up4 = (JBULayer() for _ in range(4))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(self.dim, self.dim, 1))
        self.source: str = "random init"

    @property
    def layers(self) -> list[JBULayer]:
        return [self.up1, self.up2, self.up3, self.up4]

    def native_size(self, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        return (16 * int(grid[0]), 16 * int(grid[1]))

    def _check(self, lowres: torch.Tensor, image: torch.Tensor) -> None:
        if lowres.dim() != 4 or image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(
                f"featup-jbu expects lowres (B, C, h, w) and image (B, 3, H, W); got "
                f"{tuple(lowres.shape)} and {tuple(image.shape)}"
            )
        if lowres.shape[1] != self.dim:
            raise ValueError(
                f"this JBU stack was trained for {self.dim}-channel features; got "
                f"{lowres.shape[1]} channels (use the checkpoint of your backbone)"
            )
        if lowres.shape[0] != image.shape[0]:
            raise ValueError(
                f"batch sizes differ: lowres {lowres.shape[0]}, image {image.shape[0]}"
            )

    def kernels(self, image: torch.Tensor, grid: tuple[int, int], cache: bool = True) -> JBUKernels:
        budget = int(self.cache_mb * 2**20) if cache else 0
        return JBUKernels(self, image, grid, cache_bytes=budget)

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, 3, H, W) -> (B, C, 16h, 16w), FeatUp's output."""
        self._check(lowres, image)
        kern = self.kernels(image, tuple(lowres.shape[-2:]), cache=False)
        mixed, bias = kern.mix(lowres), kern.bias(lowres)
        bsz, ch, h, w = lowres.shape
        # bands of output rows with their halos: working memory follows the band, so the
        # output (which the caller keeps) dominates, not the layer-3 map beneath it
        band = max(64, _FORWARD_BAND_BYTES // (ch * 16 * w * lowres.element_size() * bsz))
        band = 1 << (band.bit_length() - 1)
        out = lowres.new_empty(bsz, 16 * h, 16 * w, ch)  # channels last, filled band by band
        for r0 in range(0, 16 * h, band):
            r1 = min(16 * h, r0 + band)
            kern.native_rows(mixed, r0, r1, out=out[:, r0:r1]).add_(bias)
        return out.permute(0, 3, 1, 2)

    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        self._check(lowres, image)
        return self.kernels(image, tuple(lowres.shape[-2:]), cache=False)(lowres, rows)

    def extra_metadata(self) -> dict:
        return {
            "dim": self.dim,
            "native_scale": 16,
            "weights": self.source,
            "use_norm": self.use_norm,
        }


class JBUKernels(Kernels):
    """Folded per-layer JBU kernels of one image, applicable to any channel set.

    ``apply_linear(values (B, K, h, w), rows)`` runs the four layers with these kernels,
    resizes the 16x result bilinearly to the image grid ``out_size`` and returns
    ``rows``; ``affine`` is the final ``x + 0.1 * conv1x1(x)`` as ``(I + 0.1 W, 0.1 b)``.
    """

    def __init__(
        self,
        stack: FeatUpJBU,
        image: torch.Tensor,
        grid: tuple[int, int],
        cache_bytes: int = 512 << 20,
    ):
        h, w = int(grid[0]), int(grid[1])
        if h < 1 or w < 1:
            raise ValueError(f"grid must be at least 1 x 1, got {grid}")
        self.stack = stack
        self.image = image.float()
        self.grid = (h, w)
        self.out_size = (int(image.shape[-2]), int(image.shape[-1]))
        self.native = (16 * h, 16 * w)
        conv = stack.fixup_proj[1]
        wmat = conv.weight[:, :, 0, 0].detach().float()
        self.affine = (
            torch.eye(stack.dim, device=wmat.device) + 0.1 * wmat,
            0.1 * conv.bias.detach().float(),
        )
        # folded kernels of all four layers, 49 floats per high-res pixel
        need = 4 * TAPS * sum((2**l * h) * (2**l * w) for l in (1, 2, 3, 4)) * image.shape[0]
        self._cache_on = need <= cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._last: dict[int, dict[int, torch.Tensor]] = {}  # level -> its latest chunks
        self._folds: dict[tuple[int, str], torch.Tensor] = {}
        self._matbuf: torch.Tensor | None = None

    # -- kernels -----------------------------------------------------------------------

    def _guidance(self, level: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Guidance of layer ``level`` (adaptive pool of the image to 2^level x grid)."""
        n, m = (2**level) * self.grid[0], (2**level) * self.grid[1]
        g = _pool_axis(self.image, 2, n, rows)
        return _pool_axis(g, 3, m, cols)

    def _fold(self, level: int, axis: str, n: int) -> torch.Tensor:
        """:func:`_fold_matrix` of a whole axis of ``level``, computed once."""
        key = (level, axis)
        if key not in self._folds:
            self._folds[key] = _fold_matrix(n, 0, n, self.image.device)
        return self._folds[key]

    def _compute(self, level: int, k0: int, k1: int) -> torch.Tensor:
        """Folded kernels (B, k1-k0, m, 2, 2, 7, 7) for source rows [k0, k1) of ``level``."""
        layer = self.stack.layers[level - 1]
        n, m = (2**level) * self.grid[0], (2**level) * self.grid[1]
        dev = self.image.device
        y0, y1 = 2 * k0, 2 * k1
        rows = reflect_index(torch.arange(y0 - RADIUS, y1 + RADIUS, device=dev), n)
        cols = reflect_index(torch.arange(-RADIUS, m + RADIUS, device=dev), m)
        with torch.no_grad():
            k = layer.tap_kernels(self._guidance(level, rows, cols))  # (B, 49, 2kk, m)
            bsz = k.shape[0]
            k = k.view(bsz, DIAMETER, DIAMETER, y1 - y0, m)
            fr = self._fold(level, "rows", n)[y0:y1]  # (Y, i, d)
            fc = self._fold(level, "cols", m)  # (X, j, e)
            t = torch.einsum("bijyx,xje->biyxe", k, fc)
            kf = torch.einsum("yid,biyxe->byxde", fr, t)  # (B, Y, X, d, e)
        kk, ms = k1 - k0, m // 2
        kf = kf.reshape(bsz, kk, 2, ms, 2, DIAMETER, DIAMETER).permute(0, 1, 3, 2, 4, 5, 6)
        return kf.contiguous()

    def chunk_rows(self, level: int) -> int:
        """Source rows per kernel chunk of ``level``: a power of two from 4 to 32."""
        ms = (2 ** (level - 1)) * self.grid[1]
        rows = _CHUNK_BYTES // (4 * TAPS * 4 * ms)  # 2x2 outputs per source pixel
        rows = max(_TILE[0], min(_CHUNK_ROWS, rows))
        return 1 << (rows.bit_length() - 1)

    def _chunk(self, level: int, c: int) -> torch.Tensor:
        """Kernels of the aligned chunk of source rows [c*CH, (c+1)*CH) (CH = chunk_rows).

        Kernels are always computed in the same aligned chunks, so a band gets bitwise
        the same kernels whether the image is evaluated whole or in tiles. The last
        two chunks of each layer are kept, so narrow tiles through a chunk compute it once.
        """
        recent = self._last.setdefault(level, {})
        if c in recent:
            return recent[c]
        n_src = (2 ** (level - 1)) * self.grid[0]
        ch = self.chunk_rows(level)
        k = self._compute(level, c * ch, min(n_src, (c + 1) * ch))
        if len(recent) >= 2:  # bands move down the image: the two latest chunks suffice
            del recent[min(recent)]
        recent[c] = k
        return k

    def layer_kernels(self, level: int, k0: int, k1: int) -> torch.Tensor:
        """Folded kernels (B, k1-k0, w, 2, 2, 7, 7) of layer ``level`` (1..4), rows [k0, k1)."""
        if self._cache_on and level not in self._cache:
            n_src = (2 ** (level - 1)) * self.grid[0]
            n_chunks = -(-n_src // self.chunk_rows(level))
            self._cache[level] = torch.cat([self._chunk(level, c) for c in range(n_chunks)], 1)
            self._last.pop(level, None)
        if level in self._cache:
            return self._cache[level][:, k0:k1]
        ch = self.chunk_rows(level)
        first, last = k0 // ch, (k1 - 1) // ch
        parts = [self._chunk(level, c) for c in range(first, last + 1)]
        k = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        off = first * ch
        return k[:, k0 - off : k1 - off]

    # -- application -------------------------------------------------------------------

    def _tile_matrices(self, n: int, size: int, like: torch.Tensor) -> torch.Tensor:
        """(n, size) zeros-but-for-the-taps buffer, reused between steps.

        Every step writes its taps to the same positions, so the other entries stay
        zero and the buffer needs no refilling (saves a large fill per step).
        """
        buf = self._matbuf
        if (
            buf is None
            or buf.dtype != like.dtype
            or buf.device != like.device
            or buf.shape[1] != size
            or buf.shape[0] < n
            # an inference-mode tensor cannot be written outside inference mode
            or buf.is_inference() != torch.is_inference_mode_enabled()
        ):
            self._matbuf = buf = like.new_zeros(n, size)
        return buf[:n]

    def _apply_layer(
        self,
        level: int,
        src: torch.Tensor,
        s0: int,
        lo: int,
        hi: int,
        dest: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer ``level`` on channels-last source rows ``src`` (B, R, w, C) starting at
        row ``s0`` -> channels-last high-res rows [lo, hi): (B, hi-lo, 2w, C), written
        into ``dest`` when given."""
        bsz, _, ms, ch = src.shape
        k0, k1 = lo // 2, (hi - 1) // 2 + 1
        n_src = (2 ** (level - 1)) * self.grid[0]
        th, tw = _TILE
        mt = -(-ms // tw)
        pw = mt * tw + 2 * RADIUS
        wh, ww = th + 2 * RADIUS, tw + 2 * RADIUS
        n_out, n_win = 4 * th * tw, wh * ww
        idx = _tile_scatter_index(th, tw, src.device)
        # source rows per step: the tile windows copied for one step stay near _STEP_BYTES
        per_tile_row = mt * n_win * ch * src.element_size()
        step = th * max(1, min(_MAX_STEP_ROWS // th, _STEP_BYTES // max(1, per_tile_row)))
        step = 1 << (step.bit_length() - 1)  # a power of two: aligns with chunk_rows
        out = src.new_empty(bsz, hi - lo, 2 * ms, ch) if dest is None else dest
        # steps aligned to multiples of ``step`` (a power-of-two multiple of the tile and
        # a divisor or multiple of chunk_rows), so they never straddle kernel chunks badly
        starts = [k0] + list(range((k0 // step + 1) * step, k1, step))
        for c0 in starts:
            c1 = min(k1, (c0 // step + 1) * step)
            rt = -(-(c1 - c0) // th)
            kf = self.layer_kernels(level, c0, c1).to(src.dtype)  # (B, r, ms, 2, 2, 7, 7)
            kpad = kf.new_zeros(bsz, rt * th, mt * tw, 2, 2, DIAMETER, DIAMETER)
            kpad[:, : c1 - c0, :ms] = kf
            del kf
            # zero-padded source rows c0-3 .. c0 + rt*th + 3 (zero weight outside the grid)
            pad = src.new_zeros(bsz, rt * th + 2 * RADIUS, pw, ch)
            plo, phi = max(0, c0 - RADIUS), min(n_src, c1 + RADIUS)
            pad[:, plo - (c0 - RADIUS) : phi - (c0 - RADIUS), RADIUS : RADIUS + ms] = src[
                :, plo - s0 : phi - s0
            ]
            for b in range(bsz):
                # (rt*mt, window, C): every tile's source window, C contiguous (a fast copy)
                win = (
                    pad[b]
                    .as_strided(
                        (rt, mt, wh, ww, ch),
                        (th * pw * ch, tw * ch, pw * ch, ch, 1),
                        pad[b].storage_offset(),
                    )
                    .reshape(rt * mt, n_win, ch)
                )
                vals = kpad[b].view(rt, th, mt, tw, -1).transpose(1, 2).reshape(rt * mt, -1)
                mat = self._tile_matrices(rt * mt, n_out * n_win, win)
                mat.index_copy_(1, idx, vals)
                del vals
                res = torch.bmm(mat.view(rt * mt, n_out, n_win), win)  # (tiles, 4 th tw, C)
                del mat, win
                res = (
                    res.view(rt, mt, 2 * th, 2 * tw, ch)
                    .transpose(1, 2)
                    .reshape(rt * 2 * th, -1, ch)
                )
                r0, r1 = max(lo, 2 * c0), min(hi, 2 * c0 + rt * 2 * th)  # absolute rows
                out[b, r0 - lo : r1 - lo] = res[r0 - 2 * c0 : r1 - 2 * c0, : 2 * ms]
                del res
        return out

    def native_rows(
        self, values: torch.Tensor, a: int, b: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rows [a, b) of the 16x output *before* the final affine: (B, K, b-a, 16w).

        The result is a channels-last tensor (strides of ``memory_format=channels_last``);
        ``out``: a (B, b-a, 16w, K) tensor to write the last layer into.
        """
        h = self.grid[0]
        if tuple(values.shape[-2:]) != self.grid:
            raise ValueError(f"values grid {tuple(values.shape[-2:])} != kernels grid {self.grid}")
        bands = {4: (a, b)}
        for level in (4, 3, 2, 1):
            lo, hi = bands[level]
            n_src = (2 ** (level - 1)) * h
            bands[level - 1] = (max(0, lo // 2 - RADIUS), min(n_src, (hi - 1) // 2 + 1 + RADIUS))
        s0, s1 = bands[0]
        x = values[:, :, s0:s1].permute(0, 2, 3, 1).contiguous()
        for level in (1, 2, 3, 4):
            lo, hi = bands[level]
            x = self._apply_layer(level, x, s0, lo, hi, dest=out if level == 4 else None)
            s0 = lo
        return x.permute(0, 3, 1, 2)

    def mix(self, values: torch.Tensor) -> torch.Tensor:
        """The final conv's channel map ``I + 0.1 W`` applied on the low-res grid.

        Every layer applies the same weights to each channel, so the per-pixel channel
        map commutes with them: mixing the (B, C, h, w) grid costs C*C per *grid cell*
        instead of per output pixel (256x fewer), with the same result.
        """
        return torch.einsum("kc,bchw->bkhw", self.affine[0].to(values), values)

    def bias(self, like: torch.Tensor) -> torch.Tensor:
        """The final conv's ``0.1 b`` as (K, 1, 1), to add after the layers."""
        return self.affine[1].to(like)[:, None, None]

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        hn, wn = self.native
        H, W = self.out_size
        r0, r1, _ = (rows or slice(0, H)).indices(H)
        if (hn, wn) == (H, W):
            return self.native_rows(values, r0, r1)
        i0, i1, fy = linear_taps(hn, H, values.device)
        i0, i1, fy = i0[r0:r1], i1[r0:r1], fy[r0:r1]
        a, b = int(i0.min()), int(i1.max()) + 1
        x = self.native_rows(values, a, b).permute(0, 2, 3, 1)  # (B, R, Wn, K) contiguous
        fy = fy.to(x.dtype)[:, None, None]
        xr = x[:, i0 - a] * (1 - fy) + x[:, i1 - a] * fy
        del x
        j0, j1, fx = linear_taps(wn, W, values.device)
        fx = fx.to(xr.dtype)[:, None]
        return (xr[:, :, j0] * (1 - fx) + xr[:, :, j1] * fx).permute(0, 3, 1, 2)

    def __call__(self, lowres: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        # the affine's channel map commutes with the layers: apply it on the grid
        return self.apply_linear(self.mix(lowres), rows).add_(self.bias(lowres))


# ----------------------------------------------------------------------------- reference


def _reflect_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    n, m = x.shape[-2:]
    rows = reflect_index(torch.arange(-r, n + r, device=x.device), n)
    cols = reflect_index(torch.arange(-r, m + r, device=x.device), m)
    return x.index_select(-2, rows).index_select(-1, cols)


def reference_layer(layer: JBULayer, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """The straightforward evaluation of one layer (FeatUp's own steps, in torch ops).

    Range kernel by unfold (32 x 49 x H x W), value kernel as 49 shifted slices of the
    padded bicubic upsample: slow and memory hungry; the baseline and the check.
    """
    b, _, gh, gw = guidance.shape
    emb = layer._conv(layer.range_proj, guidance.float())
    queries = F.unfold(_reflect_pad(emb, RADIUS), DIAMETER).view(b, KEY_DIM, TAPS, gh, gw)
    temp = layer.range_temp.float().exp().clamp(1e-4, 1e4)
    rng = torch.softmax(temp * torch.einsum("bcphw,bchw->bphw", queries, emb), dim=1)
    k = rng * layer.spatial_kernel().view(1, TAPS, 1, 1)
    k = k / k.sum(1, keepdim=True).clamp(1e-7)
    k = k + 0.1 * layer._conv(layer.fixup_proj, torch.cat([k, guidance.float()], 1))
    hr = F.interpolate(source, (gh, gw), mode="bicubic", align_corners=False)
    hr = _reflect_pad(hr, RADIUS)
    out = source.new_zeros(source.shape[0], source.shape[1], gh, gw)
    for i in range(DIAMETER):
        for j in range(DIAMETER):
            p = i * DIAMETER + j
            out += hr[:, :, i : i + gh, j : j + gw] * k[:, p : p + 1]
    return out


def reference_forward(stack: FeatUpJBU, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """FeatUp's JBU stack, evaluated the straightforward way (see :func:`reference_layer`)."""
    x = source
    for layer in stack.layers:
        h, w = x.shape[-2:]
        x = reference_layer(layer, x, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)))
    conv = stack.fixup_proj[1]
    return x + 0.1 * F.conv2d(x, conv.weight.to(x), conv.bias.to(x))


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_state(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The JBU part of a loaded checkpoint, keys without the ``upsampler.`` prefix."""
    if not isinstance(obj, Mapping):
        raise _weights.WeightsFileError(
            f"{path!r} holds a {type(obj).__name__}, not a FeatUp checkpoint (a dict with "
            f"'state_dict' holding 'upsampler.*' tensors)"
        )
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping):
        raise _weights.WeightsFileError(
            f"{path!r}: 'state_dict' is a {type(sd).__name__}, not a dict"
        )
    if any(str(k).startswith("upsampler.") for k in sd):
        state = {
            k[len("upsampler.") :]: v for k, v in sd.items() if str(k).startswith("upsampler.")
        }
    elif "up1.range_temp" in sd:  # a bare JBU state dict (e.g. saved from FeatUpJBU)
        state = dict(sd)
    else:
        sample = ", ".join(sorted(map(str, sd))[:6]) or "none"
        raise _weights.WeightsFileError(
            f"{path!r} is not a FeatUp JBU checkpoint: no 'upsampler.*' weights in its state "
            f"dict (keys start with: {sample})"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _weights.WeightsFileError(f"{path!r}: entries {bad[:5]} are not tensors")
    return state


def load_featup_checkpoint(
    path: str | os.PathLike, use_norm: bool = True, device: str | torch.device = "cpu"
) -> FeatUpJBU:
    """A FeatUp JBU checkpoint (Lightning ``.ckpt``) -> :class:`FeatUpJBU` in eval mode.

    Reads with ``weights_only=True``; takes ``state_dict['upsampler.*']`` and ignores
    ``downsampler.*``, ``scale_net.*``, ``model.*`` and optimizer state. The feature
    dim is read from the final 1x1 conv. Raises :class:`WeightsFileError` for files
    that are not such checkpoints (wrong keys or shapes, truncated, other formats).
    """
    path = str(path)
    state = _checkpoint_state(_weights.torch_load(path), path)
    fix = state.get("fixup_proj.1.weight")
    if fix is None or fix.dim() != 4 or fix.shape[0] != fix.shape[1] or fix.shape[2:] != (1, 1):
        raise _weights.WeightsFileError(
            f"{path!r}: 'upsampler.fixup_proj.1.weight' missing or not (C, C, 1, 1) "
            f"(got {None if fix is None else tuple(fix.shape)}); not a FeatUp JBU stack"
        )
    up = FeatUpJBU(int(fix.shape[0]), use_norm=use_norm)
    expected = up.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise _weights.WeightsFileError(
            f"{path!r} does not match FeatUp's JBU stack: missing upsampler.{missing[:5]}, "
            f"unexpected upsampler.{extra[:5]}"
        )
    wrong = [
        f"upsampler.{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise _weights.WeightsFileError(
            f"{path!r}: tensor shapes do not fit a {up.dim}-d JBU stack: " + "; ".join(wrong[:5])
        )
    up.load_state_dict({k: v.float() for k, v in state.items()})
    up.source = path
    return up.eval().to(device)


def featup_checkpoint_url(backbone: str, use_norm: bool = True) -> str:
    """The FeatUp model-zoo URL of the JBU stack for ``backbone``."""
    name = _checkpoint_name(backbone, use_norm)
    return _BASE_URL + ("" if use_norm else "no_norm/") + name


def featup_checkpoint_path(backbone: str, use_norm: bool = True) -> Path:
    """Where the cached checkpoint lives: ``cache_dir()/featup/{norm,no_norm}/NAME``."""
    return (
        _weights.cache_dir()
        / "featup"
        / ("norm" if use_norm else "no_norm")
        / _checkpoint_name(backbone, use_norm)
    )


def _checkpoint_name(backbone: str, use_norm: bool) -> str:
    name = str(backbone).lower()
    if name not in FEATUP_CHECKPOINTS:
        raise _weights.WeightsUnavailableError(
            f"FeatUp published no JBU checkpoint for backbone {backbone!r}; those with one: "
            f"{', '.join(FEATUP_CHECKPOINTS)}. Pass weights=PATH to use your own."
        )
    if bool(use_norm) not in FEATUP_CHECKPOINTS[name]:
        raise _weights.WeightsUnavailableError(
            f"FeatUp published the {name} JBU stack only with use_norm="
            f"{FEATUP_CHECKPOINTS[name][0]}; pass use_norm={FEATUP_CHECKPOINTS[name][0]}"
        )
    return f"{name}_jbu_stack_cocostuff.ckpt"


def download_featup_checkpoint(backbone: str, use_norm: bool = True, progress: bool = True) -> Path:
    """Fetch FeatUp's JBU checkpoint for ``backbone`` into the cache (reused if present)."""
    return _weights.download(
        featup_checkpoint_url(backbone, use_norm),
        featup_checkpoint_path(backbone, use_norm),
        progress=progress,
    )


def _backbone_dim(backbone: Any) -> int | None:
    """Feature dim of a Backbone object or a registered backbone name (None if unknown)."""
    if backbone is None:
        return None
    if hasattr(backbone, "dim"):
        return int(backbone.dim)
    from ..backbones import get_spec

    return get_spec(str(backbone)).dim


def _build(
    backbone: Any = None,
    use_norm: bool | None = None,
    weights: Any = None,
    device: Any = None,
    cache_mb: float = OPTIONS["cache_mb"],
    **options: Any,
) -> FeatUpJBU:
    """Registry factory: FeatUp's published stack for ``backbone``, or ``weights=PATH``.

    ``use_norm`` defaults to True (FeatUp's default). ``weights="random"`` builds an
    untrained stack (tests and demos only) of the backbone's dim.
    """
    if options:
        raise ValueError(f"featup-jbu takes no options {sorted(options)}; it accepts cache_mb")
    use_norm = True if use_norm is None else bool(use_norm)
    bname = getattr(backbone, "name", backbone)
    if weights is None:
        if bname is None:
            raise ValueError(
                "featup-jbu needs backbone= (to pick FeatUp's checkpoint) or weights=PATH"
            )
        path = download_featup_checkpoint(bname, use_norm)
        try:
            up = load_featup_checkpoint(path, use_norm=use_norm)
        except _weights.WeightsFileError as exc:
            raise _weights.WeightsFileError(
                f"{exc}\nThe cached download may be damaged: delete {path} to fetch it again."
            ) from exc
        up.source = f"FeatUp {bname} ({'norm' if use_norm else 'no_norm'}) from {path}"
    elif isinstance(weights, str) and weights == "random":
        dim = _backbone_dim(backbone)
        if dim is None:
            raise ValueError("featup-jbu with weights='random' needs backbone= to know the dim")
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
            torch.manual_seed(0)
            up = FeatUpJBU(dim, use_norm=use_norm)
        up.source = "random (untrained weights, for tests and demos only)"
    else:
        up = load_featup_checkpoint(weights, use_norm=use_norm)
    dim = _backbone_dim(backbone)
    if dim is not None and int(dim) != up.dim:
        raise ValueError(
            f"the JBU stack is for {up.dim}-d features but backbone {bname!r} gives {dim}-d"
        )
    up.cache_mb = cache_mb
    if device is not None:
        up = up.to(device)
    return up.eval()


FeatUpJBU.build = classmethod(
    lambda cls, options, *, backbone=None, use_norm=True, weights=None, device=None: _build(
        backbone, use_norm, weights, device, cache_mb=options.cache_mb
    )
)
