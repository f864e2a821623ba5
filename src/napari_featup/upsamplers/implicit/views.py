"""View geometry of the implicit fit: FeatUp's random jitter (reflect pad, zoom, crop,
flip) as per-axis taps and matrices, random cell windows, and :class:`ViewOps`, which
blurs, jitters and attention-pools a batch of views without forming them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...ops import blur_matrix5, reflect_index
from .config import ImplicitConfig


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
    i0, i1 = reflect_index(i0 - pad, n), reflect_index(i1 - pad, n)
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


class JitterTaps:
    """One jitter as gathers: ``taps(x)`` is the jittered view of (B, C, H, W) ``x``
    (reflect pad, bilinear zoom, crop, flip), two taps per output row and column."""

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
        bh, bw = blur_matrix5(h), blur_matrix5(w)
        origins = origins or [(0, 0)] * len(jitters)
        ty, tx = [], []
        for j, (i0, j0) in zip(jitters, origins):
            my = bh @ _tap_matrix(*_axis_taps(h, pad, j.zoom, j.dy, False), h)
            mx = bw @ _tap_matrix(*_axis_taps(w, pad, j.zoom, j.dx, j.flip), w)
            ry = reflect_index(torch.arange(i0 * s - lo, (i0 + cells[0]) * s + hi), h)
            rx = reflect_index(torch.arange(j0 * s - lo, (j0 + cells[1]) * s + hi), w)
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


__all__ = ["Jitter", "JitterTaps", "ViewOps", "sample_jitter", "window_origins"]
