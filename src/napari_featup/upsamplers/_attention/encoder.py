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

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...progress import check_cancelled

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

    def __post_init__(self):
        self.wkq = torch.cat([self.wk0, self.wq0], dim=1).contiguous()  # both first convs

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

    Per chunk, each channel's mean and variance are computed in float32 (two passes);
    at :meth:`finalise` the chunks are combined exactly in float64 (pooled variance:
    within-chunk plus between-chunk parts), then the channels into groups (the same
    decomposition over the group's channels).
    """

    def __init__(self, groups: int, eps: float):
        self.groups, self.eps = groups, eps
        self._acc: dict[str, list] = {}
        self._known: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, rstd (G,)
        self._affine: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def known(self, name: str) -> bool:
        return name in self._known

    def observe(self, name: str, x: torch.Tensor, scratch: torch.Tensor) -> None:
        """Add chunk ``x`` (N, C) to ``name``'s statistics (``scratch``: an (N, C) buffer)."""
        xf = x.float()
        # two passes per channel (var_mean is several times slower on CPU)
        m = xf.mean(0)
        sq = torch.sub(xf, m, out=scratch) if scratch.dtype == xf.dtype else xf - m
        self._acc.setdefault(name, []).append((x.shape[0], m, sq.square_().mean(0)))

    def finalise(self) -> None:
        """Turn every accumulated name into known statistics."""
        for name, parts in self._acc.items():
            n = torch.tensor([p[0] for p in parts], dtype=torch.float64)
            # float64 on the CPU (MPS has no float64): a few hundred numbers
            m = torch.stack([p[1] for p in parts]).cpu().double()  # (chunks, C)
            v = torch.stack([p[2] for p in parts]).cpu().double()
            w = (n / n.sum())[:, None]
            mean_c = (w * m).sum(0)
            var_c = (w * (v + (m - mean_c) ** 2)).sum(0)
            mc, vc = mean_c.view(self.groups, -1), var_c.view(self.groups, -1)
            mean = mc.mean(1)
            var = (vc + (mc - mean[:, None]) ** 2).mean(1)
            self._known[name] = (mean, torch.rsqrt(var + self.eps))
        self._acc.clear()

    def merged(
        self, names: list[str], affines: list, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (s, t) with ``GN(x) = x * s + t`` for branches side by side
        (``affines``: (weight, bias) or None each); cached per names and dtype."""
        key = (tuple(names), like.dtype)
        if key not in self._affine:
            rep = like.shape[1] // len(names) // self.groups
            ss, ts = [], []
            for name, affine in zip(names, affines):
                mean, rstd = self._known[name]
                s = rstd.repeat_interleave(rep)
                t = -mean.repeat_interleave(rep) * s
                if affine is not None:
                    w, b = (v.detach().cpu().double() for v in affine)
                    s, t = s * w, t * w + b
                ss.append(s)
                ts.append(t)
            self._affine[key] = (torch.cat(ss).to(like), torch.cat(ts).to(like))
        return self._affine[key]


@dataclass
class Workspace:
    """The buffers of one chunk of N pixels, reused op after op so that no megabyte-sized
    temporary is allocated (and page-faulted) per op. Both branches sit side by side:
    columns [0, D) key, [D, 2D) query; the image encoder uses the first half."""

    r: torch.Tensor  # (N, 2D) residual streams
    z: torch.Tensor  # (N, 2D) activations awaiting their GroupNorm

    @classmethod
    def new(cls, n: int, d: int, like: torch.Tensor) -> Workspace:
        return cls(like.new_empty(n, 2 * d), like.new_empty(n, 2 * d))


def _norm(
    stats: GroupStats, names: list[str], src, dst, affines: list, act: bool = True
) -> Generator[None, None, None]:
    """``dst = silu(GN(src))`` for ``len(names)`` branches side by side in (N, k*D)
    ``src``/``dst`` (``dst`` doubles as scratch). Pauses once if the statistics are
    unknown (all branches of one level become known together)."""
    d = src.shape[1] // len(names)
    if not stats.known(names[0]):
        for i, name in enumerate(names):
            stats.observe(name, src[:, i * d : (i + 1) * d], dst[:, i * d : (i + 1) * d])
        yield
    s, t = stats.merged(names, affines, src)
    torch.addcmul(t, src, s, out=dst)
    if act:
        F.silu(dst, inplace=True)


def rope_tables(
    freqs: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos/sin of the RoPE angles split by coordinate: the angle of pixel (r, c) is
    ``y_r f0 + x_c f1`` with ``y, x`` = linspace(0, 1) over rows and columns, so
    (H, D) and (W, D) tables give every pixel's by the angle-sum identities
    (transcendentals per row and column instead of per pixel)."""
    dev = freqs.device
    f = freqs.detach().cpu().double()
    ys = torch.linspace(0, 1, height, dtype=torch.float32).double()
    xs = torch.linspace(0, 1, width, dtype=torch.float32).double()
    a, b = ys[:, None] * f[0], xs[:, None] * f[1]
    dt = freqs.dtype
    return tuple(t.to(dev, dt) for t in (a.cos(), a.sin(), b.cos(), b.sin()))


def apply_rope(x, rows: slice, tables: tuple, width: int, out, cos, sin) -> None:
    """``out = x cos + rot(x) sin`` (RoPE) for (N, D) pixels of ``rows`` (full width),
    ``rot([x1, x2]) = [-x2, x1]`` over the channel halves; ``cos``/``sin`` are (N, D)
    scratch buffers."""
    ca, sa, cb, sb = tables
    d = x.shape[1]
    c3, s3 = cos.view(-1, width, d), sin.view(-1, width, d)
    ca, sa = ca[rows, None, :], sa[rows, None, :]
    torch.mul(ca, cb, out=c3)
    c3.addcmul_(sa, sb, value=-1)
    torch.mul(sa, cb, out=s3)
    s3.addcmul_(ca, sb)
    h = d // 2
    torch.mul(x, cos, out=out)
    out[:, :h].addcmul_(x[:, h:], sin[:, :h], value=-1)
    out[:, h:].addcmul_(x[:, :h], sin[:, h:])


def encode_chunk(
    ew: EncoderWeights,
    stats: GroupStats,
    pixels: torch.Tensor,
    rows: slice,
    tables: tuple[torch.Tensor, ...],
    width: int,
    ws: Workspace,
    scratch: torch.Tensor,
    on_keys: Callable | None = None,
    on_queries: Callable | None = None,
) -> Generator[None, None, None]:
    """The per-pixel network on one chunk: ``pixels`` (N, 3) of image ``rows``.

    ``on_keys(a, residual)`` receives the key encoder's output before its last conv
    (which commutes with the pooling that follows), ``on_queries(q)`` the queries
    (N, D); either branch runs only if asked for. ``ws`` holds the chunk's state
    across pauses; ``scratch`` (>= N, 2D) is free at every pause, so chunks share it.
    """
    n, d = pixels.shape[0], ew.dim
    a = scratch[:n]
    x = pixels
    if ew.guidance is not None:
        x = torch.addcmul(ew.guidance[1], x, ew.guidance[0])
    r, z, a1 = ws.r[:, :d], ws.z[:, :d], a[:, :d]
    torch.mm(x, ew.w0, out=r)
    for i, blk in enumerate(ew.image):
        yield from _norm(stats, [f"image.{i}.n1"], r, a1, [blk.n1])
        torch.mm(a1, blk.w1, out=z)
        yield from _norm(stats, [f"image.{i}.n2"], z, a1, [blk.n2])
        r.addmm_(a1, blk.w2)
    apply_rope(r, rows, tables, width, a1, ws.z[:, :d], ws.z[:, d:])
    branches = [b for b, on in (("key", on_keys), ("query", on_queries)) if on is not None]
    if not branches:
        return
    cols = slice(0, 2 * d) if len(branches) == 2 else (slice(0, d) if on_keys else slice(d, 2 * d))
    r, z, ab = ws.r[:, cols], ws.z[:, cols], a[:, cols]
    torch.mm(a1, ew.wkq[:, cols], out=r)
    blocks = [ew.key if b == "key" else ew.query for b in branches]
    last = len(ew.key) - 1
    for i in range(len(ew.key)):
        blk = [bl[i] for bl in blocks]
        part = [slice(j * d, (j + 1) * d) for j in range(len(branches))]
        yield from _norm(stats, [f"{b}.{i}.n1" for b in branches], r, ab, [b.n1 for b in blk])
        for p, b in zip(part, blk):
            torch.mm(ab[:, p], b.w1, out=z[:, p])
        yield from _norm(stats, [f"{b}.{i}.n2" for b in branches], z, ab, [b.n2 for b in blk])
        for name, p, b in zip(branches, part, blk):
            if name == "key" and i == last:
                on_keys(ab[:, p], r[:, p])  # consumed now, before the buffers are reused
            else:
                r[:, p].addmm_(ab[:, p], b.w2)
    if on_queries is not None:
        q, zq = r[:, -d:], z[:, -d:]
        if ew.query_norm:
            yield from _norm(stats, ["query.norm"], q, zq, [None], act=False)
            q = zq
        on_queries(q)


def row_chunks(height: int, width: int, start: int = 0, stop: int | None = None) -> list[slice]:
    """Bands of whole rows of about :data:`CHUNK_PIXELS` pixels covering [start, stop)."""
    stop = height if stop is None else stop
    step = max(1, CHUNK_PIXELS // max(1, width))
    return [slice(r, min(stop, r + step)) for r in range(start, stop, step)]


def run_kept(gens: list[Generator], stats: GroupStats) -> None:
    """Advance all chunk generators level by level (each kept alive with its
    workspace), finalising the statistics whenever all have paused."""
    active = gens
    while active:
        still = []
        for g in active:
            check_cancelled()  # a whole image's encoding is one step of the run
            try:
                next(g)
                still.append(g)
            except StopIteration:
                pass
        stats.finalise()
        active = still


def run_swept(make: Callable[[int], Generator], n: int, stats: GroupStats) -> int:
    """Sweep fresh chunk generators until one sweep needs no new statistics; returns the
    number of sweeps. (Chunks behave alike within a sweep: all pause or none.)"""
    sweeps = 0
    while True:
        sweeps += 1
        paused = False
        for i in range(n):
            check_cancelled()
            g = make(i)
            try:
                next(g)
                paused = True
                g.close()
            except StopIteration:
                pass
        if not paused:
            return sweeps
        stats.finalise()
