"""The fast evaluation of FeatUp's JBU stack: folded per-layer kernels, applied in bands.

None of it changes the result beyond float rounding (the tests check it against
``reference.py`` and against FeatUp's own outputs):

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
* Kernels depend on the image only, so :class:`JBUKernels` computes them once and
  applies them to any channel set (features, PCA projections, similarity queries).
* Rows are evaluated in bands with the exact halo each layer needs, so tiled output
  equals untiled output and memory follows the band, not the image.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from ...errors import UpsamplerError
from ...ops import linear_taps, reflect_index
from ..base import Kernels
from .layer import DIAMETER, RADIUS, TAPS

if TYPE_CHECKING:
    from .stack import FeatUpJBU

#: tile of source positions per matrix product (rows, cols): window (4+6) x (4+6)
_TILE = (4, 4)
#: source rows whose kernels are computed together: at most 32, fewer on wide grids so
#: a chunk's kernels stay near _CHUNK_BYTES (a power of two, fixed per layer and image)
_CHUNK_ROWS = 32
_CHUNK_BYTES = 8 << 20
#: per apply step: at most this many source rows, and about this many bytes of windows
_MAX_STEP_ROWS = 64
_STEP_BYTES = 8 << 20


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


class JBUKernels(Kernels):
    """Folded per-layer JBU kernels of one image, applicable to any channel set.

    ``apply_linear(values (B, K, h, w), rows)`` runs the four layers with these kernels,
    resizes the 16x result bilinearly to the image grid ``out_size`` and returns
    ``rows``; ``affine`` is the final ``x + 0.1 * conv1x1(x)`` as ``(I + 0.1 W, 0.1 b)``.

    Parameters
    ----------
    stack
        The JBU stack whose layers make the kernels.
    image
        (B, 3, H, W) normalised image; each layer's guidance is its adaptive average pool.
    grid
        (h, w) of the low-res grids the kernels will be applied to.
    cache_bytes
        Keep all four layers' folded kernels when they fit in this many bytes; else
        compute them per band of rows (the two latest chunks per layer are kept).
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
            raise UpsamplerError(f"grid must be at least 1 x 1, got {grid}")
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
        need = 4 * TAPS * sum((2**lev * h) * (2**lev * w) for lev in (1, 2, 3, 4)) * image.shape[0]
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
            raise UpsamplerError(
                f"values grid {tuple(values.shape[-2:])} != kernels grid {self.grid}"
            )
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
        """The four layers on (B, K, h, w) values, resized to ``out_size``; only ``rows``."""
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
        """The upsampled features (B, C, h, w) -> (B, C, R, W), final affine included."""
        # the affine's channel map commutes with the layers: apply it on the grid
        return self.apply_linear(self.mix(lowres), rows).add_(self.bias(lowres))
