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
        return cls(rows, blocks, size, grid)

    def entries(self) -> int:
        """Attention weights kept for the whole output (band entries, masked included)."""
        per_row = sum((b.x1 - b.x0) * (b.k1 - b.k0) for b in self.blocks)
        return sum((e - s) * (hi - lo) * per_row for s, e, lo, hi in self.rows)

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
    """Write the output of ``rows`` into ``out`` (C, R, W).

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
                dst = out[:, a - rows.start : b - rows.start, blk.x0 : blk.x1]
                apply_band(vals, att, lo, hi, blk, dst)


class WindowKernels(Kernels):
    """AnyUp's attention weights for one (features, image) pair, kept per (row group,
    column block) over that band's keys only. Any K-channel low-res map (a PCA
    projection, a query's dot products) upsamples through them exactly as the features
    do; the weights themselves came from all C channels."""

    def __init__(self, win: Windows, store: torch.dtype | None = None):
        self.win, self.out_size, self.store = win, win.size, store
        self.segments: list[tuple[int, int, int, int, int, torch.Tensor]] = []

    def record(self, a: int, b: int, lo: int, hi: int, bi: int, att: torch.Tensor) -> None:
        self.segments.append((a, b, lo, hi, bi, att.to(self.store or att.dtype)))

    def nbytes(self) -> int:
        return sum(s[-1].numel() * s[-1].element_size() for s in self.segments)

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        H, W = self.out_size
        h, w = self.win.grid
        r0, r1, _ = (rows or slice(0, H)).indices(H)
        out = values.new_empty(values.shape[0], values.shape[1], r1 - r0, W)
        for bi_ in range(values.shape[0]):
            vals = values[bi_].reshape(values.shape[1], h, w)
            low = vals.to(self.store or vals.dtype)  # products in the weights' precision
            for a, e, lo, hi, bi, att in self.segments:
                s, t = max(a, r0), min(e, r1)
                if s >= t:
                    continue
                blk = self.win.blocks[bi]
                bw = blk.x1 - blk.x0
                # only the wanted rows of the segment: their slice of the weights
                att_rows = att.view(e - a, bw, -1)[s - a : t - a].reshape((t - s) * bw, -1)
                dst = out[bi_, :, s - r0 : t - r0, blk.x0 : blk.x1]
                if low.dtype == dst.dtype:
                    apply_band(low, att_rows, lo, hi, blk, dst)
                else:
                    v = low[:, lo:hi, blk.k0 : blk.k1].reshape(low.shape[0], -1)
                    dst.copy_((v @ att_rows.t()).view(dst.shape))
        return out
