"""One image through the per-pixel encoders (:mod:`.encoder`), kept or swept by memory:
whole-image GroupNorm statistics, the pooled keys, and the queries of any band of rows;
plus the small helpers around them (pooling, the query conv, RMSNorm, guidance)."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable

import torch
import torch.nn.functional as F

from ...progress import check_cancelled
from .encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderWeights,
    GroupStats,
    Workspace,
    encode_chunk,
    rope_tables,
    row_chunks,
    run_kept,
    run_swept,
)


class RowBandPool:
    """``F.adaptive_avg_pool2d`` of an (H, W, D) map to (h, w), fed in bands of rows.

    Column bins are pooled per band with adaptive pooling itself; rows are added into
    their bins (PyTorch's: rows ``floor(i H / h)`` to ``ceil((i + 1) H / h)``) with
    weight 1 / bin height.
    """

    def __init__(self, size: tuple[int, int], grid: tuple[int, int], dim: int, like: torch.Tensor):
        (self.H, self.W), (self.h, self.w) = size, grid
        i = torch.arange(self.h)
        lo = (i * self.H) // self.h
        hi = -((-(i + 1) * self.H) // self.h)
        r = torch.arange(self.H)
        m = ((r[None] >= lo[:, None]) & (r[None] < hi[:, None])).double()
        self.rows = (m / (hi - lo)[:, None].double()).to(like)  # (h, H)
        self.sum = torch.zeros(self.h, self.w, dim, dtype=like.dtype, device=like.device)

    def add(self, rows: slice, x: torch.Tensor) -> None:
        band = x.view(1, rows.stop - rows.start, self.W, -1).permute(0, 3, 1, 2)
        cols = F.adaptive_avg_pool2d(band, (band.shape[2], self.w))[0]  # (D, R, w)
        self.sum += torch.einsum("hr,drw->hwd", self.rows[:, rows], cols)


def inv_rms(x: torch.Tensor) -> torch.Tensor:
    """``1 / rms(x)`` over the last dim as (N, 1), eps = the dtype's machine epsilon
    (``nn.RMSNorm(eps=None)``)."""
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32) ** 2
    return torch.rsqrt(ms / x.shape[-1] + torch.finfo(x.dtype).eps).to(x.dtype)


def rms_project(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``RMSNorm(x) @ w + b`` for (N, D) rows, with RMSNorm's weight folded into ``w``:
    the row scale commutes with the product, so it is applied to the product (no
    normalised copy of ``x``)."""
    y = x @ w
    return torch.addcmul(b, y, inv_rms(x), out=y)


def conv3x3_rows(q: torch.Tensor, weight: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
    """3x3 convolution (zero padding at the image border) of (R', W, D) rows holding a
    halo row above unless ``top`` (the band starts at the image's first row) and below
    unless ``bottom``; returns the (R, W, D) inner rows."""
    r, w, d = q.shape
    buf = q.new_zeros(1, r + int(top) + int(bottom), w + 2, d)
    buf[0, int(top) : int(top) + r, 1 : w + 1] = q
    # a channels-last view: oneDNN's fast layout for this convolution on CPU
    out = F.conv2d(buf.permute(0, 3, 1, 2), weight)
    return out[0].permute(1, 2, 0)


def guidance_affine(
    mean: Iterable[float], std: Iterable[float], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) taking an ImageNet-normalised image to ``(x - mean) / std``, or
    None when that is ImageNet's own."""
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if all(math.isclose(a, b) for a, b in zip(mean + std, IMAGENET_MEAN + IMAGENET_STD)):
        return None
    m0, s0 = torch.tensor(IMAGENET_MEAN).double(), torch.tensor(IMAGENET_STD).double()
    m1, s1 = torch.tensor(mean).double(), torch.tensor(std).double()
    return (s0 / s1).to(like), ((m0 - m1) / s1).to(like)


def _finish(gen: Generator) -> None:
    """Run a chunk generator whose statistics are all known to its end."""
    for _ in gen:
        raise RuntimeError("GroupNorm statistics missing after the statistics pass")


class EncodedImage:
    """One image through the per-pixel encoders: whole-image GroupNorm statistics,
    the pooled keys, and (when ``budget_bytes`` allows a kept run) the queries.

    ``image`` (3, H, W) in the compute dtype. Queries of any band of rows are then
    available from :meth:`query_rows` (kept, or recomputed from the image with the
    stored statistics: the same numbers).
    """

    #: values per pixel a kept run holds, in units of D: two (N, 2D) buffers per chunk
    #: and the kept queries
    KEPT_PER_PIXEL = 5

    def __init__(
        self,
        ew: EncoderWeights,
        image: torch.Tensor,
        grid: tuple[int, int],
        budget_bytes: int,
        arena: Callable[[int], torch.Tensor] | None = None,
    ):
        self.ew = ew
        # working buffers come from ``arena(numel)`` (a flat tensor the caller may keep
        # for the next image: fresh memory costs page faults on every call)
        self._arena = arena or (lambda n: image.new_empty(n))
        _, self.H, self.W = image.shape
        self.grid = grid
        self.pixels = image.permute(1, 2, 0).reshape(-1, 3).contiguous()
        self.tables = rope_tables(ew.freqs, self.H, self.W)
        self.stats = GroupStats(ew.groups, ew.eps)
        d, item = ew.dim, image.element_size()
        self.kept = self.H * self.W * d * item * self.KEPT_PER_PIXEL <= budget_bytes
        chunks = row_chunks(self.H, self.W)
        like = self.pixels
        self.nmax = max(c.stop - c.start for c in chunks) * self.W
        sizes = [(c.stop - c.start) * self.W for c in chunks] if self.kept else [self.nmax]
        flat = self._arena((1 + 2 * len(sizes)) * self.nmax * 2 * d)
        self.scratch = flat[: self.nmax * 2 * d].view(self.nmax, 2 * d)
        spaces, at = [], self.nmax * 2 * d
        for n in sizes:
            r = flat[at : at + n * 2 * d].view(n, 2 * d)
            z = flat[at + n * 2 * d : at + 2 * n * 2 * d].view(n, 2 * d)
            spaces.append(Workspace(r, z))
            at += 2 * n * 2 * d
        pool_a = RowBandPool((self.H, self.W), grid, d, like)
        pool_r = RowBandPool((self.H, self.W), grid, d, like)
        # kept queries sit inside a zero border: the 3x3 conv reads bands of it in place
        self.queries = like.new_empty(self.H + 2, self.W + 2, d) if self.kept else None
        if self.queries is not None:
            for edge in (
                self.queries[0],
                self.queries[-1],
                self.queries[:, 0],
                self.queries[:, -1],
            ):
                edge.zero_()
        query_norms = ew.norm_names("query")
        pooled = [False]

        def make(i: int, ws: Workspace) -> Generator:
            rows = chunks[i]

            def keys(a, res):
                pool_a.add(rows, a)
                pool_r.add(rows, res)
                pooled[0] = pooled[0] or i == len(chunks) - 1

            def queries(q):
                if self.queries is not None:
                    self.queries[1 + rows.start : 1 + rows.stop, 1:-1] = q.view(-1, self.W, d)

            need_q = self.kept or not all(self.stats.known(n) for n in query_norms)
            return self._chunk(
                rows,
                ws,
                on_keys=None if pooled[0] else keys,
                on_queries=queries if need_q else None,
            )

        if self.kept:
            run_kept([make(i, ws) for i, ws in enumerate(spaces)], self.stats)
            self.sweeps = 1
        else:
            self.sweeps = run_swept(lambda i: make(i, spaces[0]), len(chunks), self.stats)
        # the key encoder's last conv and residual, after the pooling they commute with
        self.pooled_keys = torch.addmm(
            pool_r.sum.view(-1, d), pool_a.sum.view(-1, d), ew.key[-1].w2
        ).view(*grid, d)

    def _chunk(self, rows: slice, ws: Workspace, on_keys=None, on_queries=None) -> Generator:
        n = (rows.stop - rows.start) * self.W
        px = self.pixels[rows.start * self.W : rows.stop * self.W]
        ws = Workspace(ws.r[:n], ws.z[:n])
        return encode_chunk(
            self.ew,
            self.stats,
            px,
            rows,
            self.tables,
            self.W,
            ws,
            self.scratch,
            on_keys,
            on_queries,
        )

    def release_queries(self) -> None:
        """Drop the kept queries (later bands are recomputed, to the same values)."""
        self.queries = None

    def _pre_conv(self, r0: int, r1: int) -> torch.Tensor:
        """Queries (before the 3x3 conv) of rows [r0, r1): (R, W, D)."""
        d = self.ew.dim
        out = self.pixels.new_empty(r1 - r0, self.W, d)
        flat = self._arena(3 * self.nmax * 2 * d)
        self.scratch = flat[: self.nmax * 2 * d].view(self.nmax, 2 * d)
        ws = Workspace(*flat[self.nmax * 2 * d :].view(2, self.nmax, 2 * d))
        for band in row_chunks(self.H, self.W, r0, r1):
            check_cancelled()

            def put(q, band=band):
                out[band.start - r0 : band.stop - r0] = q.view(-1, self.W, d)

            _finish(self._chunk(band, ws, on_queries=put))
        return out

    def query_rows(self, rows: slice, conv: torch.Tensor) -> torch.Tensor:
        """The 3x3-convolved queries of ``rows``: (R, W, D), zero-padded at the border."""
        r0, r1 = rows.start, rows.stop
        if self.queries is not None:  # padded rows r0 - 1 .. r1 + 1 hold the halo
            band = self.queries[r0 : r1 + 2].unsqueeze(0).permute(0, 3, 1, 2)
            return F.conv2d(band, conv)[0].permute(1, 2, 0)
        a, b = max(0, r0 - 1), min(self.H, r1 + 1)
        return conv3x3_rows(self._pre_conv(a, b), conv, top=a == r0, bottom=b == r1)
