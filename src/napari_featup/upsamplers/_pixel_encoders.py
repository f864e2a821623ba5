"""The full-resolution image encoders of the attention upsamplers (AnyUp, JAFAR), run in
pixel chunks with exact whole-image GroupNorm statistics.

Both models encode the guidance image with 1x1 convolutions, GroupNorm and SiLU
(an image encoder, RoPE, then a key and a query encoder of the same shape), so every
op is per pixel except GroupNorm, whose statistics are global. A chunk of rows cannot
be normalised before every pixel has contributed to the statistics, so the network is
written as one generator per chunk (:func:`encode_chunk`) that pauses at a GroupNorm
whose statistics are not known yet, after adding its chunk's share to
:class:`GroupStats`. Two ways to drive the generators:

* :func:`run_kept`: every chunk's generator stays alive, so the network runs once;
  memory is the chunks' activations (about 4 x 128 floats per pixel).
* :func:`run_swept`: a fresh generator per chunk and sweep, restarted from the image
  once more statistics are known; memory is one chunk, compute grows with the number of
  GroupNorm levels (8 for AnyUp, 9 for JAFAR: about 3x a kept run).

Both accumulate the same chunks in the same order, so the statistics (and every output
computed from them) do not depend on which driver ran or on how outputs are tiled.
Chunks of a few thousand pixels keep the 128-wide matrices in cache (about 2x the
throughput of whole-image matrix products on a CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: pixels per chunk: 128-wide float32 activations of 4096 pixels are 2 MB (cache-resident)
CHUNK_PIXELS = 4096
#: ImageNet mean / std: the normalisation of the guidance images upsamplers receive
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Block:
    """A ResBlock ``x + W2 silu(GN2(W1 silu(GN1(x))))`` (1x1 convs, no bias).

    ``n1``/``n2`` are GroupNorm (weight, bias); ``w1``/``w2`` are (in, out): ``x @ w``.
    """

    n1: tuple[torch.Tensor, torch.Tensor]
    w1: torch.Tensor
    n2: tuple[torch.Tensor, torch.Tensor]
    w2: torch.Tensor


@dataclass
class EncoderWeights:
    """Weights of the per-pixel network, in the compute dtype, matrices as (in, out).

    ``guidance``: per-channel (scale, shift) applied to the image first (JAFAR's
    re-normalisation), or None. ``query_norm``: a GroupNorm without affine on the query
    encoder's output (JAFAR).
    """

    w0: torch.Tensor  # (3, D)
    image: list[Block]
    freqs: torch.Tensor  # (2, D), RoPE angular frequencies per (row, col) coordinate
    wk0: torch.Tensor  # (D, D)
    wq0: torch.Tensor  # (D, D)
    key: list[Block]
    query: list[Block]
    query_norm: bool = False
    guidance: tuple[torch.Tensor, torch.Tensor] | None = None
    groups: int = 8
    eps: float = 1e-5

    @property
    def dim(self) -> int:
        return int(self.w0.shape[1])

    def norm_names(self, branch: str) -> list[str]:
        """Names of the GroupNorms of the key or query branch."""
        blocks = self.key if branch == "key" else self.query
        names = [f"{branch}.{i}.n{j}" for i in range(len(blocks)) for j in (1, 2)]
        return names + (["query.norm"] if branch == "query" and self.query_norm else [])


class GroupStats:
    """GroupNorm statistics over the whole image, accumulated chunk by chunk.

    Per chunk the group means and variances are computed in float32 (two passes),
    then combined across chunks in float64 (Chan et al.'s pairwise update).
    """

    def __init__(self, groups: int, eps: float):
        self.groups, self.eps = groups, eps
        self._acc: dict[str, list] = {}
        self._known: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, rstd (G,)
        self._affine: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def known(self, name: str) -> bool:
        return name in self._known

    def observe(self, name: str, x: torch.Tensor) -> None:
        n, c = x.shape
        xf = x.float()
        # two passes per channel (var_mean over grouped dims is several times slower),
        # then the groups by the law of total variance
        m = xf.mean(0)
        v = (xf - m).square_().mean(0)
        m, v = m.view(self.groups, -1), v.view(self.groups, -1)
        mean = m.mean(1)
        var = v.mean(1) + (m - mean[:, None]).square().mean(1)
        nb = n * (c // self.groups)
        acc = self._acc.get(name)
        if acc is None:
            self._acc[name] = [nb, mean.double(), var.double() * nb]
            return
        na = acc[0]
        tot = na + nb
        delta = mean.double() - acc[1]
        acc[1] = acc[1] + delta * (nb / tot)
        acc[2] = acc[2] + var.double() * nb + delta * delta * (na * nb / tot)
        acc[0] = tot

    def finalise(self) -> None:
        """Turn every accumulated name into known statistics."""
        for name, (n, mean, m2) in self._acc.items():
            self._known[name] = (mean, torch.rsqrt(m2 / n + self.eps))
        self._acc.clear()

    def scale_shift(
        self, name: str, affine: tuple[torch.Tensor, torch.Tensor] | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (s, t) with ``GN(x) = x * s + t`` (cached per dtype)."""
        key = (name, like.dtype)
        if key not in self._affine:
            mean, rstd = self._known[name]
            c = like.shape[1]
            rep = c // self.groups
            s = rstd.repeat_interleave(rep)
            t = -mean.repeat_interleave(rep) * s
            if affine is not None:
                w, b = (v.double() for v in affine)
                s, t = s * w, t * w + b
            self._affine[key] = (s.to(like), t.to(like))
        return self._affine[key]


def _norm(stats: GroupStats, items: list) -> Generator[None, None, list[torch.Tensor]]:
    """GroupNorm (+ SiLU) of several same-level tensors: ``items`` are
    ``(name, x, affine, silu)``. Pauses once if their statistics are unknown."""
    if not stats.known(items[0][0]):
        for name, x, _, _ in items:
            stats.observe(name, x)
        yield
    out = []
    for name, x, affine, act in items:
        s, t = stats.scale_shift(name, affine, x)
        y = torch.addcmul(t, x, s)
        out.append(F.silu(y, inplace=True) if act else y)
    return out


def _blocks(
    stats: GroupStats, names: list[str], xs: list[torch.Tensor], blocks: list[Block], defer: list
) -> Generator[None, None, list]:
    """One ResBlock per branch, in lockstep (their GroupNorms share pauses). A branch
    with ``defer`` returns ``(silu(GN2(.)), x)`` without the last conv and residual."""
    a = yield from _norm(stats, [(f"{n}.n1", x, b.n1, True) for n, x, b in zip(names, xs, blocks)])
    z = [ai @ b.w1 for ai, b in zip(a, blocks)]
    a = yield from _norm(stats, [(f"{n}.n2", zi, b.n2, True) for n, zi, b in zip(names, z, blocks)])
    return [(ai, x) if d else torch.addmm(x, ai, b.w2) for ai, x, b, d in zip(a, xs, blocks, defer)]


def rope_tables(
    freqs: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos/sin of the RoPE angles split by coordinate: the angle of pixel (r, c) is
    ``y_r f0 + x_c f1`` with ``y, x`` = linspace(0, 1) over rows and columns, so
    (H, D) and (W, D) tables give every pixel's by the angle-sum identities
    (transcendentals per row and column instead of per pixel)."""
    dev = freqs.device
    f = freqs.detach().double().cpu()
    ys = torch.linspace(0, 1, height, dtype=torch.float32).double()
    xs = torch.linspace(0, 1, width, dtype=torch.float32).double()
    a, b = ys[:, None] * f[0], xs[:, None] * f[1]
    dt = freqs.dtype
    return tuple(t.to(dev, dt) for t in (a.cos(), a.sin(), b.cos(), b.sin()))


def apply_rope(
    x: torch.Tensor, rows: slice, tables: tuple[torch.Tensor, ...], width: int
) -> torch.Tensor:
    """RoPE of (N, D) pixels of ``rows`` (full width): ``x cos + rot(x) sin`` with
    ``rot([x1, x2]) = [-x2, x1]`` over the two channel halves."""
    ca, sa, cb, sb = (t.to(x.dtype) for t in tables)
    ca, sa = ca[rows, None, :], sa[rows, None, :]
    cos = (ca * cb - sa * sb).view(-1, x.shape[1])
    sin = (sa * cb + ca * sb).view(-1, x.shape[1])
    h = x.shape[1] // 2
    out = x * cos
    out[:, :h].addcmul_(x[:, h:], sin[:, :h], value=-1)
    out[:, h:].addcmul_(x[:, :h], sin[:, h:])
    return out


def encode_chunk(
    ew: EncoderWeights,
    stats: GroupStats,
    pixels: torch.Tensor,
    rows: slice,
    tables: tuple[torch.Tensor, ...],
    width: int,
    keys: bool,
    queries: bool,
) -> Generator[None, None, dict]:
    """The per-pixel network on one chunk: ``pixels`` (N, 3) of image ``rows``.

    Returns ``{"key": (a, residual)}`` (the key encoder's output before its last conv,
    which commutes with the pooling that follows) and/or ``{"query": q}`` (N, D).
    """
    x = pixels
    if ew.guidance is not None:
        x = torch.addcmul(ew.guidance[1], x, ew.guidance[0])
    z = x @ ew.w0
    for i, blk in enumerate(ew.image):
        (z,) = yield from _blocks(stats, [f"image.{i}"], [z], [blk], [False])
    e = apply_rope(z, rows, tables, width)
    del z
    names, xs, blocks, defer = [], [], [], []
    n = len(ew.key)
    if keys and queries:
        kq = e @ torch.cat([ew.wk0, ew.wq0], dim=1)
        xs = [kq[:, : ew.dim], kq[:, ew.dim :]]
    elif keys or queries:
        xs = [e @ (ew.wk0 if keys else ew.wq0)]
    del e
    if keys:
        names.append("key")
        blocks.append(ew.key)
        defer.append(True)
    if queries:
        names.append("query")
        blocks.append(ew.query)
        defer.append(False)
    for i in range(n):
        last = i == n - 1
        xs = yield from _blocks(
            stats,
            [f"{b}.{i}" for b in names],
            xs,
            [bl[i] for bl in blocks],
            [d and last for d in defer],
        )
    out = dict(zip(names, xs))
    if queries and ew.query_norm:
        (out["query"],) = yield from _norm(stats, [("query.norm", out["query"], None, False)])
    return out


def row_chunks(height: int, width: int, start: int = 0, stop: int | None = None) -> list[slice]:
    """Bands of whole rows of about :data:`CHUNK_PIXELS` pixels covering [start, stop)."""
    stop = height if stop is None else stop
    step = max(1, CHUNK_PIXELS // max(1, width))
    return [slice(r, min(stop, r + step)) for r in range(start, stop, step)]


def run_kept(gens: list[Generator], on_done: Callable[[int, dict], None], stats: GroupStats):
    """Advance all chunk generators level by level (each kept alive with its
    activations), finalising the statistics whenever all have paused."""
    active = list(range(len(gens)))
    while active:
        still = []
        for i in active:
            try:
                next(gens[i])
                still.append(i)
            except StopIteration as stop:
                on_done(i, stop.value)
        stats.finalise()
        active = still


def run_swept(
    make: Callable[[int], Generator], n: int, on_done: Callable[[int, dict], None], stats
) -> int:
    """Sweep fresh chunk generators until one sweep needs no new statistics; returns the
    number of sweeps. ``on_done`` only sees the complete final sweep."""
    sweeps = 0
    while True:
        sweeps += 1
        paused = False
        done: list[tuple[int, dict]] = []
        for i in range(n):
            g = make(i)
            try:
                next(g)
                paused = True
                g.close()
            except StopIteration as stop:
                done.append((i, stop.value))
        if not paused:
            for i, out in done:
                on_done(i, out)
            return sweeps
        stats.finalise()


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


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """``x / rms(x)`` over the last dim, eps = the dtype's machine epsilon
    (``nn.RMSNorm(eps=None)``); the learned weight is folded into what follows."""
    ms = x.float().pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(ms + torch.finfo(x.dtype).eps).to(x.dtype)


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


def _finish(gen: Generator) -> dict:
    """Run a chunk generator whose statistics are all known to its result."""
    try:
        next(gen)
    except StopIteration as stop:
        return stop.value
    gen.close()
    raise RuntimeError("GroupNorm statistics missing after the statistics pass")


class EncodedImage:
    """One image through the per-pixel encoders: whole-image GroupNorm statistics,
    the pooled keys, and (when ``budget_bytes`` allows a kept run) the queries.

    ``image`` (3, H, W) in the compute dtype. Queries of any band of rows are then
    available from :meth:`query_rows` (kept, or recomputed from the image with the
    stored statistics: the same numbers).
    """

    #: activations alive per pixel in a kept run, in units of D values
    KEPT_PER_PIXEL = 6

    def __init__(
        self, ew: EncoderWeights, image: torch.Tensor, grid: tuple[int, int], budget_bytes: int
    ):
        self.ew = ew
        _, self.H, self.W = image.shape
        self.grid = grid
        self.pixels = image.permute(1, 2, 0).reshape(-1, 3).contiguous()
        self.tables = rope_tables(ew.freqs, self.H, self.W)
        self.stats = GroupStats(ew.groups, ew.eps)
        d, item = ew.dim, image.element_size()
        self.kept = self.H * self.W * d * item * self.KEPT_PER_PIXEL <= budget_bytes
        chunks = row_chunks(self.H, self.W)
        like = self.pixels
        pool_a = RowBandPool((self.H, self.W), grid, d, like)
        pool_r = RowBandPool((self.H, self.W), grid, d, like)
        self.queries = like.new_empty(self.H * self.W, d) if self.kept else None
        query_norms = ew.norm_names("query")

        def make(i: int) -> Generator:
            rows = chunks[i]
            q = self.kept or not all(self.stats.known(n) for n in query_norms)
            return self._chunk(rows, keys=True, queries=q)

        def done(i: int, out: dict) -> None:
            rows = chunks[i]
            a, res = out["key"]
            pool_a.add(rows, a)
            pool_r.add(rows, res)
            if self.queries is not None:
                self.queries[rows.start * self.W : rows.stop * self.W] = out["query"]

        if self.kept:
            run_kept([make(i) for i in range(len(chunks))], done, self.stats)
            self.sweeps = 1
        else:
            self.sweeps = run_swept(make, len(chunks), done, self.stats)
        # the key encoder's last conv and residual, after the pooling they commute with
        self.pooled_keys = torch.addmm(
            pool_r.sum.view(-1, d), pool_a.sum.view(-1, d), ew.key[-1].w2
        ).view(*grid, d)

    def _chunk(self, rows: slice, keys: bool, queries: bool) -> Generator:
        px = self.pixels[rows.start * self.W : rows.stop * self.W]
        return encode_chunk(self.ew, self.stats, px, rows, self.tables, self.W, keys, queries)

    def release_queries(self) -> None:
        """Drop the kept queries (later bands are recomputed, to the same values)."""
        self.queries = None

    def _pre_conv(self, r0: int, r1: int) -> torch.Tensor:
        """Queries (before the 3x3 conv) of rows [r0, r1): (R, W, D)."""
        d = self.ew.dim
        if self.queries is not None:
            return self.queries[r0 * self.W : r1 * self.W].view(r1 - r0, self.W, d)
        out = self.pixels.new_empty(r1 - r0, self.W, d)
        for band in row_chunks(self.H, self.W, r0, r1):
            q = _finish(self._chunk(band, keys=False, queries=True))["query"]
            out[band.start - r0 : band.stop - r0] = q.view(-1, self.W, d)
        return out

    def query_rows(self, rows: slice, conv: torch.Tensor) -> torch.Tensor:
        """The 3x3-convolved queries of ``rows``: (R, W, D), zero-padded at the border."""
        r0, r1 = rows.start, rows.stop
        a, b = max(0, r0 - 1), min(self.H, r1 + 1)
        return conv3x3_rows(self._pre_conv(a, b), conv, top=a == r0, bottom=b == r1)
