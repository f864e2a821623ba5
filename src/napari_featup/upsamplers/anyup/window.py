"""AnyUp's window attention, on key bands rather than on the whole key grid.

Output pixel (r, c) attends to the key cells of rows ``[lo(r), hi(r))`` and columns
``[lo(c), hi(c))``, with ``lo = floor(clamp(p - ratio, 0, 1) n)``, ``hi = ceil(clamp(p +
ratio, 0, 1) n)`` and ``p = (r + 0.5) / H`` (float32, as AnyUp computes its mask):
about 4 x 4 cells of a 16 x 16 grid. Windows are separable, so output rows with the
same row window form a *row group*, which needs only its key rows. Its output columns
are split into a few *column blocks*; a block's queries need only the key columns of
their windows' union. Per (row group, block) the scores and the output are then two
dense matrix products over that band (the output written straight into the
(C, rows, W) result), masked to each pixel's window. AnyUp's reference computes scores
for all h*w keys and drops ~94% of them at 16 x 16; here the band is the window's
rows and, for grids up to 24 wide, all columns (more blocks for wider grids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._attention.upsampler import SCORE_BYTES, heads_softmax_mean
from ..base import Kernels


def window_bounds(n_out: int, n_in: int, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) key index range of every output index, computed in float32 on the CPU."""
    pos = (torch.arange(n_out, dtype=torch.float32) + 0.5) / n_out
    lo = ((pos - ratio).clamp(0.0, 1.0) * n_in).floor().long()
    hi = ((pos + ratio).clamp(0.0, 1.0) * n_in).ceil().long()
    return lo, hi


def _groups(lo: torch.Tensor, hi: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """Runs of equal (lo, hi): (start, stop, lo, hi)."""
    n = lo.shape[0]
    change = torch.ones(n, dtype=torch.bool)
    change[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    starts = torch.nonzero(change).flatten().tolist() + [n]
    return [(s, e, int(lo[s]), int(hi[s])) for s, e in zip(starts[:-1], starts[1:])]


@dataclass
class Block:
    """Output columns [x0, x1) and the key columns [k0, k1) their windows need;
    ``invalid`` (x1 - x0, k1 - k0) marks keys outside each column's window."""

    x0: int
    x1: int
    k0: int
    k1: int
    invalid: torch.Tensor


@dataclass
class Windows:
    """The window layout of one (output size, grid) pair (see the module docstring)."""

    rows: list[tuple[int, int, int, int]]  # row groups (start, stop, lo, hi)
    blocks: list[Block]
    size: tuple[int, int]
    grid: tuple[int, int]
    col_lo: torch.Tensor  # (W,) first key column of each output column's window
    kc: int  # the widest window, in key columns

    @classmethod
    def build(cls, size: tuple[int, int], grid: tuple[int, int], ratio: float, device) -> Windows:
        (H, W), (h, w) = size, grid
        rows = _groups(*window_bounds(H, h, ratio))
        lo, hi = window_bounds(W, w, ratio)
        # one block writes whole output rows (no copy); wide grids split the columns so
        # the band stays near the window's width (about 0.2 w + w / blocks key columns)
        n_blocks = 1 if w <= 24 else min(W, math.ceil(w / 8))
        edges = [round(i * W / n_blocks) for i in range(n_blocks + 1)]
        blocks = []
        for x0, x1 in zip(edges[:-1], edges[1:]):
            if x1 <= x0:
                continue
            k0, k1 = int(lo[x0]), int(hi[x1 - 1])
            u = torch.arange(k0, k1)
            bad = (u[None] < lo[x0:x1, None]) | (u[None] >= hi[x0:x1, None])
            blocks.append(Block(x0, x1, k0, k1, bad.to(device)))
        kc = int((hi - lo).max())
        return cls(rows, blocks, size, grid, lo.clamp(max=w - kc).to(device), kc)

    def entries(self) -> int:
        """Attention weights :class:`WindowKernels` keeps: per pixel its window's rows
        times the widest window's columns."""
        return sum((e - s) * (hi - lo) for s, e, lo, hi in self.rows) * self.size[1] * self.kc

    def segments(self, rows: slice):
        """(a, b, lo, hi): parts of row groups inside ``rows``."""
        for s, e, lo, hi in self.rows:
            a, b = max(s, rows.start), min(e, rows.stop)
            if a < b:
                yield a, b, lo, hi


def apply_band(
    vals: torch.Tensor, att: torch.Tensor, lo: int, hi: int, blk: Block, dst: torch.Tensor
) -> None:
    """``dst`` (K, n, bw) = band values (K, h, w) weighted by ``att`` (n*bw, kr*kb)."""
    k, n = dst.shape[0], dst.shape[1]
    v = vals[:, lo:hi, blk.k0 : blk.k1].reshape(k, -1)
    if dst.stride(2) == 1 and (n == 1 or dst.stride(1) == dst.shape[2]):
        # whole output rows: (K, n*bw) is a view, and the product is written in place
        torch.mm(v, att.t(), out=dst.view(k, -1))
    else:
        dst.copy_((v @ att.t()).view(k, n, -1))


def window_attend(
    win: Windows,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    rows: slice,
    out: torch.Tensor,
    record=None,
) -> None:
    """Write the output of ``rows`` into ``out`` (C, R, W) (None: weights only).

    ``q`` (R*W, heads, d) scaled queries of the rows, ``keys`` (h*w, heads, d),
    ``values`` (C, h*w). ``record(a, b, lo, hi, block_index, A)`` receives the weights.
    """
    (h, w), (_, W) = win.grid, win.size
    n_heads, d = q.shape[1], q.shape[2]
    qv = q.view(-1, W, n_heads, d)
    kv = keys.view(h, w, n_heads, d)
    vals = values.view(values.shape[0], h, w)
    for s0, s1, lo, hi in win.segments(rows):
        kr = hi - lo
        for bi, blk in enumerate(win.blocks):
            bw, kb = blk.x1 - blk.x0, blk.k1 - blk.k0
            # rows of the segment per product, so that its scores stay in cache
            step = max(1, SCORE_BYTES // (n_heads * bw * kr * kb * 4))
            for a in range(s0, s1, step):
                b = min(s1, a + step)
                n = b - a
                qq = qv[a - rows.start : b - rows.start, blk.x0 : blk.x1]  # (n, bw, heads, d)
                qq = qq.permute(2, 0, 1, 3).reshape(n_heads, n * bw, d)
                kk = kv[lo:hi, blk.k0 : blk.k1].permute(2, 3, 0, 1).reshape(n_heads, d, kr * kb)
                s = torch.bmm(qq, kk).view(n_heads, n, bw, kr, kb)
                s.masked_fill_(blk.invalid[None, None, :, None, :], float("-inf"))
                att = heads_softmax_mean(s.view(n_heads, n * bw, kr * kb))
                if record is not None:
                    record(a, b, lo, hi, bi, att)
                if out is not None:
                    dst = out[:, a - rows.start : b - rows.start, blk.x0 : blk.x1]
                    apply_band(vals, att, lo, hi, blk, dst)


class WindowKernels(Kernels):
    """AnyUp's attention weights for one (features, image) pair, kept per row group and
    output column over that column's window only: (W, n, kr * kc) per row group, ``kc``
    the widest window (narrower ones padded with zero weights). Any K-channel low-res
    map (a PCA projection, a query's dot products) upsamples through them exactly as
    the features do; the weights themselves came from all C channels."""

    def __init__(self, win: Windows, store: torch.dtype | None = None):
        self.win, self.out_size, self.store = win, win.size, store
        self.groups: dict[int, torch.Tensor] = {}  # row-group start -> (W, n, kr*kc)
        w, kc = win.grid[1], win.kc
        # flat key-cell index of (column, key row i, key column j) for a window starting
        # on grid row 0; a row group starting on row lo reads from cell lo * w on
        self._base: dict[int, torch.Tensor] = {}
        self._cols = (win.col_lo[:, None] + torch.arange(kc, device=win.col_lo.device)).view(
            -1, 1, kc
        )
        self._w = w

    def _index(self, kr: int) -> torch.Tensor:
        if kr not in self._base:
            r = torch.arange(kr, device=self._cols.device)[None, :, None] * self._w
            self._base[kr] = (r + self._cols).flatten()
        return self._base[kr]

    def record(self, a: int, b: int, lo: int, hi: int, bi: int, att: torch.Tensor) -> None:
        """Store a band's weights (n*bw, kr*kb) in the per-column window layout."""
        win, blk = self.win, self.win.blocks[bi]
        s, e = next((s, e) for s, e, lo_, _ in win.rows if s <= a < e and lo_ == lo)
        kr, kb, bw, kc = hi - lo, blk.k1 - blk.k0, blk.x1 - blk.x0, win.kc
        if s not in self.groups:
            dt = self.store or att.dtype
            self.groups[s] = att.new_zeros(win.size[1], e - s, kr * kc, dtype=dt)
        # the band padded with kc zero columns on both sides holds every column's window
        a4 = torch.nn.functional.pad(att.view(b - a, bw, kr, kb), (kc, kc))
        u0 = win.col_lo[blk.x0 : blk.x1] - blk.k0 + kc  # window start within the pad
        cols = torch.arange(bw, device=att.device)
        win_w = a4.unfold(3, kc, 1)[:, cols, :, u0]  # (bw, n, kr, kc)
        self.groups[s][blk.x0 : blk.x1, a - s : b - s] = win_w.reshape(bw, b - a, -1)

    def nbytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.groups.values())

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        H, W = self.out_size
        r0, r1, _ = (rows or slice(0, H)).indices(H)
        bsz, k = values.shape[:2]
        out = values.new_empty(bsz, k, r1 - r0, W)
        for bi in range(bsz):
            flat = values[bi].reshape(k, -1).to(self.store or values.dtype)
            for s, e, lo, hi in self.win.rows:
                a, b = max(s, r0), min(e, r1)
                if a >= b:
                    continue
                att = self.groups[s][:, a - s : b - s]  # (W, n, kr*kc)
                dst = out[bi, :, a - r0 : b - r0]
                if k > 8:  # many channels: per-column copies of the values would dominate
                    self._apply_bands(flat.view(k, *self.win.grid), att, lo, hi, dst)
                    continue
                v = flat[:, lo * self._w :].index_select(1, self._index(hi - lo))
                v = v.view(k, W, -1)
                if k == 1:  # a click: multiply-add beats W tiny matrix-vector products
                    o = (att * v[0, :, None, :]).sum(-1, dtype=torch.float32)  # (W, n)
                    dst[0] = o.t()
                else:
                    dst.copy_(torch.bmm(att, v.permute(1, 2, 0)).permute(2, 1, 0))
        return out

    def _apply_bands(self, vals, att, lo: int, hi: int, dst: torch.Tensor) -> None:
        """``dst`` (K, n, W) from (W, n, kr*kc) window weights, block by block through
        the dense key band (as the forward pass computes it)."""
        kr, kc, n = hi - lo, self.win.kc, att.shape[1]
        for blk in self.win.blocks:
            bw, kb = blk.x1 - blk.x0, blk.k1 - blk.k0
            band = att.new_zeros(n, bw, kr, kb + 2 * kc)
            u0 = self.win.col_lo[blk.x0 : blk.x1] - blk.k0 + kc
            cols = torch.arange(bw, device=att.device)
            band.unfold(3, kc, 1)[:, cols, :, u0] = att[blk.x0 : blk.x1].view(bw, n, kr, kc)
            band = band[..., kc : kc + kb].reshape(n * bw, kr * kb)
            o = vals[:, lo:hi, blk.k0 : blk.k1].reshape(vals.shape[0], -1) @ band.t()
            dst[:, :, blk.x0 : blk.x1] = o.view(vals.shape[0], n, bw)
