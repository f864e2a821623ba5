"""Full-resolution views of an image of any size, computed per block.

:class:`LazyField` answers what :class:`~napari_featup.field.FeatureField` answers (PCA
colours, cosine similarity, features) for any rectangle of pixels, reading only the
low-res cells under it plus a halo and the image region beneath them. Each block is the
upsampler run on that crop; with a halo at least the upsampler's reach the block equals
the whole-image result (tested against :class:`FeatureField`). :meth:`LazyField.to_dask`
wraps it as a dask array (what napari needs to show a 20k x 20k similarity map by
computing only the visible chunks), with coarser pyramid levels interpolated from the
low-res grid.

Only channel-linear upsamplers without a per-image fit work per block; others need the
whole image (:func:`blockwise`).
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from .analysis import PCAProjection, cosine_from_dots, unit_queries
from .field import FeatureField
from .ops import channel_norm, linear_taps, resize_bilinear
from .source import Prepared
from .upsamplers import Upsampler

#: low-res cells of context an upsampler needs for an exact block (its reach): bilinear
#: reads the nearest cells; FeatUp's JBU stack (four 7x7 layers after bicubic steps)
#: measured: a block with 4 cells of context is off by 1e-4 (relative), with 5 by float
#: rounding (3e-7); one more for margin
HALO_CELLS = {"bilinear": 2, "featup-jbu": 6}
#: upsamplers that read only the image's size, not its pixels (blocks skip reading it)
IMAGE_BLIND = {"bilinear"}
#: reach assumed for a linear upsampler that declares none and has no ``radius``
DEFAULT_HALO = 16
#: computed chunks of :meth:`LazyField.to_dask` arrays kept for reuse (napari asks for
#: every visible chunk again at each pan; dask keeps nothing between computes)
CHUNK_CACHE_BYTES = 256 << 20
#: :meth:`LazyField.pyramid` adds coarser levels until the image fits in this many px
OVERVIEW_PX = 1024


def blockwise(up: Upsampler) -> bool:
    """Whether ``up`` can be evaluated block by block (linear, no per-image fit)."""
    return bool(up.linear) and not up.fits_per_image


def halo_cells(up: Upsampler) -> int:
    """Context cells around a block that make it exact for ``up``."""
    h = getattr(up, "halo_cells", None) or HALO_CELLS.get(up.name)
    if h is None:
        # guided upsamplers: a window of ``radius`` cells, widened by each of their
        # ``consistency`` back-projection steps (each one window again)
        r = getattr(up, "radius", None)
        steps = int(getattr(up, "consistency", 0) or 0)
        h = (int(r) + 1) * (steps + 1) + 1 if r is not None else DEFAULT_HALO
    return int(h)


class LazyField:
    """PCA colours, similarity and features of any pixel block of one image.

    Blocks are in image pixels, rows ``[r0, r1)`` x cols ``[c0, c1)``; the last
    ``cache_blocks`` blocks keep their crops and kernels, so a click on a shown block
    is one small upsample.

    Parameters
    ----------
    lowres : array-like
        (C, h, w) features (numpy, zarr or dask; any float dtype), already channel-normed
        when the upsampler uses the norm.
    prepared : Prepared
        The image and its intensity mapping (the upsampler's guidance).
    upsampler : Upsampler
        Lifts a block's cells to its pixels.
    pixels_per_patch : int
        Image pixels per feature cell.
    device : str or torch.device
        Where blocks are computed.
    halo : int or None
        Cells of context around a block (None: the upsampler's own halo).
    cache_blocks : int
        Blocks kept with their crops and kernels.
    reuse_kernels : bool
        False asks upsamplers that can not to keep their kernels within a block (a block
        computed once, e.g. when writing colours, then needs a fraction of the memory).
    """

    def __init__(
        self,
        lowres: Any,
        prepared: Prepared,
        upsampler: Upsampler,
        pixels_per_patch: int,
        *,
        device: str | torch.device = "cpu",
        halo: int | None = None,
        cache_blocks: int = 8,
        reuse_kernels: bool = True,
    ):
        if not blockwise(upsampler):
            raise ValueError(
                f"upsampler {upsampler.name!r} fits to the whole image or is not linear: it "
                "cannot be evaluated per block (use FeatureField on the whole image)"
            )
        self.lowres = lowres
        self.prepared = prepared
        self.upsampler = upsampler
        self.s = int(pixels_per_patch)
        self.size = prepared.source.shape
        self.grid = tuple(int(v) for v in lowres.shape[-2:])
        self.channels = int(lowres.shape[0])
        self.device = torch.device(device)
        self.halo = halo_cells(upsampler) if halo is None else int(halo)
        self._cache: OrderedDict[tuple, tuple[FeatureField, tuple[int, int]]] = OrderedDict()
        self._cache_blocks = int(cache_blocks)
        self._reuse = bool(reuse_kernels)
        self._lock = threading.Lock()
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()  # computed dask chunks
        self._chunk_bytes = 0

    @classmethod
    def from_field(cls, field: FeatureField, pixels_per_patch: int, **kwargs) -> LazyField:
        """A LazyField over a whole-image :class:`FeatureField` (its grid and guidance
        tensor), e.g. to give napari dask arrays of a result computed in memory."""
        return cls(field.lowres[0].cpu().numpy(), _TensorGuide(field), field.upsampler,
                   pixels_per_patch, device=field.lowres.device, **kwargs)  # fmt: skip

    # -- one block ---------------------------------------------------------------------

    def _cells(self, r0: int, r1: int, c0: int, c1: int) -> tuple[int, int, int, int]:
        s, hc, (h, w) = self.s, self.halo, self.grid
        return (
            max(0, r0 // s - hc),
            min(h, -(-r1 // s) + hc),
            max(0, c0 // s - hc),
            min(w, -(-c1 // s) + hc),
        )

    def field(self, r0: int, r1: int, c0: int, c1: int) -> tuple[FeatureField, tuple[int, int]]:
        """A :class:`FeatureField` over the cells under the block plus the halo, and the
        pixel offset of its origin (cached for the last few blocks)."""
        key = self._cells(r0, r1, c0, c1)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        i0, i1, j0, j1 = key
        s = self.s
        low = np.asarray(self.lowres[:, i0:i1, j0:j1], dtype=np.float32)
        low_t = torch.from_numpy(low)[None].to(self.device)
        if self.upsampler.name in IMAGE_BLIND:  # a zero-stride view: the right shape, no pixels
            guide = torch.zeros(1, 3, 1, 1, device=self.device).expand(
                1, 3, (i1 - i0) * s, (j1 - j0) * s
            )
        else:
            guide = self.prepared.guidance(i0 * s, i1 * s, j0 * s, j1 * s, self.device)
        f = FeatureField(low_t, guide, self.upsampler, ((i1 - i0) * s, (j1 - j0) * s))
        kernels = self.upsampler.kernels
        if not self._reuse and "cache" in inspect.signature(kernels).parameters:
            with torch.inference_mode():
                f._kernels = kernels(guide, (i1 - i0, j1 - j0), cache=False)
        out = (f, (i0 * s, j0 * s))
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
        return out

    def _check(self, r0: int, r1: int, c0: int, c1: int) -> None:
        h, w = self.size
        if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
            raise ValueError(f"block [{r0}:{r1}, {c0}:{c1}] is not inside the {h} x {w} image")

    @torch.inference_mode()
    def project(
        self, weight: np.ndarray, bias: np.ndarray | None, r0: int, r1: int, c0: int, c1: int
    ) -> np.ndarray:
        """``weight @ f + bias`` per pixel of the block: (K, C), (K,) -> (K, r, c)."""
        self._check(r0, r1, c0, c1)
        f, (y, x) = self.field(r0, r1, c0, c1)
        w = torch.as_tensor(np.asarray(weight, np.float32), device=self.device)
        b = None if bias is None else torch.as_tensor(np.asarray(bias, np.float32)).to(w)
        t = f.kernels.project(f.lowres, w, b, slice(r0 - y, r1 - y))
        return t[0, :, :, c0 - x : c1 - x].float().cpu().numpy()

    @torch.inference_mode()
    def features(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """(C, r, c) float32 full-resolution features of the block."""
        self._check(r0, r1, c0, c1)
        f, (y, x) = self.field(r0, r1, c0, c1)
        return f.highres_rows(slice(r0 - y, r1 - y))[:, :, c0 - x : c1 - x].cpu().numpy()

    def norms(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """(r, c) per-pixel feature norms of the block."""
        return np.linalg.norm(self.features(r0, r1, c0, c1), axis=0)

    def pca_rgb(self, pca: PCAProjection, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """(r, c, K) colours in [0, 1] of the block under ``pca``."""
        w, b = pca.weight_bias()
        return pca.colorize(self.project(w, b, r0, r1, c0, c1))

    def similarity(self, query: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """(r, c) cosine similarity of the block's pixels to a (C,) query."""
        q = unit_queries(query, self.channels)
        self._check(r0, r1, c0, c1)
        f, (y, x) = self.field(r0, r1, c0, c1)
        if self.upsampler.name == "bilinear":  # 4 taps: from the grid's 2 x 2 Gram maps
            qt = torch.from_numpy(q[0]).to(f.lowres.device)
            return bilinear_cosine(
                f.lowres[0], qt, f.size, slice(r0 - y, r1 - y), slice(c0 - x, c1 - x)
            )
        out = np.empty((r1 - r0, c1 - c0), np.float32)
        # rows in bands, so a 512 px chunk of 384 channels holds ~64 MB, not 400 MB
        band = max(1, (64 << 20) // (4 * self.channels * max(1, f.size[1])))
        for b0 in range(r0, r1, band):
            b1 = min(r1, b0 + band)
            with torch.inference_mode():
                t = f.highres_rows(slice(b0 - y, b1 - y))[:, :, c0 - x : c1 - x]
            feats = t.float().cpu().numpy()
            dots = np.tensordot(q[0], feats, axes=(0, 0))
            out[b0 - r0 : b1 - r0] = cosine_from_dots(dots, np.linalg.norm(feats, axis=0))
        return out

    def features_at(self, points) -> np.ndarray:
        """(N, C) full-resolution features at (row, col) pixels."""
        out = np.zeros((len(points), self.channels), np.float32)
        for n, (r, c) in enumerate(points):
            ri, ci = int(round(float(r))), int(round(float(c)))
            out[n] = self.features(ri, ri + 1, ci, ci + 1)[:, 0, 0]
        return out

    def iter_blocks(self, block: int = 1024):
        """``(r0, r1, c0, c1)`` covering the image, row-major, ``block`` px a side."""
        h, w = self.size
        for r0 in range(0, h, block):
            for c0 in range(0, w, block):
                yield r0, min(h, r0 + block), c0, min(w, c0 + block)

    # -- overview levels and dask --------------------------------------------------------

    def _coarse(self, fn, factor: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """``fn(values (1, C, h', w')) -> (K, h', w')`` on the low-res cells under a block
        of a level ``factor`` times coarser, bilinearly interpolated to it (an overview:
        coarse levels skip the upsampler)."""
        s, (h, w) = self.s, self.grid
        i0, i1 = max(0, (r0 * factor) // s - 1), min(h, -(-(r1 * factor) // s) + 1)
        j0, j1 = max(0, (c0 * factor) // s - 1), min(w, -(-(c1 * factor) // s) + 1)
        low = torch.from_numpy(np.asarray(self.lowres[:, i0:i1, j0:j1], np.float32))[None]
        vals = fn(low)  # (1, K, h', w') on cells
        # place cell centres at pixel i*s + (s-1)/2 of level 0; level pixel y is centred
        # on level-0 pixel y*factor + (factor-1)/2
        ys = (np.arange(r0, r1) * factor + (factor - 1) / 2 - (s - 1) / 2) / s - i0
        xs = (np.arange(c0, c1) * factor + (factor - 1) / 2 - (s - 1) / 2) / s - j0
        v = vals[0].numpy()
        yi = np.clip(ys, 0, v.shape[1] - 1)
        xi = np.clip(xs, 0, v.shape[2] - 1)
        y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
        y1, x1 = np.minimum(y0 + 1, v.shape[1] - 1), np.minimum(x0 + 1, v.shape[2] - 1)
        fy, fx = (yi - y0)[:, None], (xi - x0)[None]
        top = v[:, y0][:, :, x0] * (1 - fx) + v[:, y0][:, :, x1] * fx
        bot = v[:, y1][:, :, x0] * (1 - fx) + v[:, y1][:, :, x1] * fx
        return (top * (1 - fy) + bot * fy).astype(np.float32)

    def to_dask(
        self,
        kind: str = "pca",
        *,
        pca: PCAProjection | None = None,
        query: np.ndarray | None = None,
        chunk: int = 512,
        level: int = 0,
    ):
        """A dask array of the whole image computed per chunk: ``kind="pca"`` (H, W, 3)
        uint8 colours under ``pca``, ``"similarity"`` (H, W) float32 to ``query``.

        ``level`` > 0 is ``2**level`` times coarser, interpolated from the low-res grid
        (cheap overviews for napari's multiscale display)."""
        import dask.array as da

        factor = 2**level
        h, w = (-(-n // factor) for n in self.size)
        base = da.zeros((h, w), chunks=chunk, dtype=np.uint8)
        if kind == "pca":
            if pca is None:
                raise ValueError("kind='pca' needs pca=")
            wt, b = pca.weight_bias()

            def block(r0, r1, c0, c1):
                if level == 0:
                    rgb = self.pca_rgb(pca, r0, r1, c0, c1)
                else:
                    proj = self._coarse(
                        lambda v: (
                            torch.einsum("kc,bchw->bkhw", torch.from_numpy(wt), v)
                            + torch.from_numpy(b)[:, None, None]
                        ),
                        factor,
                        r0,
                        r1,
                        c0,
                        c1,
                    )
                    rgb = pca.colorize(proj)
                return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)

            extra = {"new_axis": 2, "chunks": base.chunks + ((3,),), "dtype": np.uint8}
        elif kind == "similarity":
            if query is None:
                raise ValueError("kind='similarity' needs query=")
            q = unit_queries(query, self.channels)

            def block(r0, r1, c0, c1):
                if level == 0:
                    return self.similarity(query, r0, r1, c0, c1)

                def sim(v):
                    dots = torch.einsum("c,bchw->bhw", torch.from_numpy(q[0]), v)
                    return (dots / torch.linalg.vector_norm(v, dim=1).clamp(min=1e-12))[:, None]

                return self._coarse(sim, factor, r0, r1, c0, c1)[0]

            extra = {"dtype": np.float32}
        else:
            raise ValueError(f"kind must be 'pca' or 'similarity', got {kind!r}")

        token = (kind, level, chunk, _digest(query if kind == "similarity" else pca))

        def make(x, block_info=None):
            (r0, r1), (c0, c1) = block_info[0]["array-location"][:2]
            key = token + (r0, c0)
            with self._lock:
                if key in self._chunks:  # shown before (napari re-slices on every pan)
                    self._chunks.move_to_end(key)
                    return self._chunks[key]
            out = block(r0, r1, c0, c1)
            with self._lock:
                self._chunks[key] = out
                self._chunk_bytes += out.nbytes
                while self._chunk_bytes > CHUNK_CACHE_BYTES and len(self._chunks) > 1:
                    self._chunk_bytes -= self._chunks.popitem(last=False)[1].nbytes
            return out

        return base.map_blocks(make, meta=np.empty((0,) * (3 if kind == "pca" else 2)), **extra)

    def pyramid(self, kind: str = "pca", levels: int | None = None, **kwargs) -> list:
        """``to_dask`` at levels 0, 1, ... until the image fits in :data:`OVERVIEW_PX`."""
        if levels is None:
            levels = max(1, int(np.ceil(np.log2(max(self.size) / OVERVIEW_PX))) + 1)
        return [self.to_dask(kind, level=lv, **kwargs) for lv in range(levels)]


@torch.inference_mode()
def bilinear_cosine(
    low: torch.Tensor, q: torch.Tensor, size: tuple[int, int], rows: slice, cols: slice
) -> np.ndarray:
    """Cosine similarity to the unit query ``q`` (C,) of ``low`` (C, h, w) resized
    bilinearly to ``size``, at ``rows`` x ``cols``, without upsampling C channels.

    Each output pixel is ``a c F00 + a d F01 + b c F10 + b d F11`` of its 2 x 2 cells, so
    its dot with ``q`` interpolates the grid's dots and its squared norm combines the
    cells' Gram terms (norms, and products with the right, lower and diagonal
    neighbours), computed once on the grid: exact up to rounding.
    """
    c, h, w = low.shape
    f = torch.nn.functional.pad(low[None].float(), (0, 1, 0, 1), mode="replicate")[0]
    maps = {
        "q": torch.einsum("c,chw->hw", q.float(), f),
        "n": (f * f).sum(0),
        "h": (f[:, :, :-1] * f[:, :, 1:]).sum(0),  # (i, j).(i, j+1)
        "v": (f[:, :-1] * f[:, 1:]).sum(0),  # (i, j).(i+1, j)
        "d1": (f[:, :-1, :-1] * f[:, 1:, 1:]).sum(0),  # (i, j).(i+1, j+1)
        "d2": (f[:, :-1, 1:] * f[:, 1:, :-1]).sum(0),  # (i, j+1).(i+1, j)
    }
    maps = {k: v.double().cpu() for k, v in maps.items()}
    i0, _, fy = linear_taps(h, size[0])
    j0, _, fx = linear_taps(w, size[1])
    # the replicated last row/column makes (i0 + 1) the clamped tap at the far edge
    ii, jj = i0[rows][:, None], j0[cols][None]
    b, d = fy[rows][:, None], fx[cols][None]
    a, cc = 1 - b, 1 - d

    def g(key: str, di: int, dj: int) -> torch.Tensor:
        return maps[key][ii + di, jj + dj]

    dot = a * (cc * g("q", 0, 0) + d * g("q", 0, 1)) + b * (cc * g("q", 1, 0) + d * g("q", 1, 1))
    n2 = (
        a * a * (cc * cc * g("n", 0, 0) + 2 * cc * d * g("h", 0, 0) + d * d * g("n", 0, 1))
        + b * b * (cc * cc * g("n", 1, 0) + 2 * cc * d * g("h", 1, 0) + d * d * g("n", 1, 1))
        + 2 * a * b * (cc * cc * g("v", 0, 0) + d * d * g("v", 0, 1))
        + 2 * a * b * cc * d * (g("d1", 0, 0) + g("d2", 0, 0))
    )
    norm = n2.clamp(min=0).sqrt().clamp(min=1e-12)
    return (dot / norm).float().numpy()


def _digest(obj: Any) -> str:
    """A key for a query vector or a PCA projection (chunks differ with them)."""
    import hashlib

    if obj is None:
        return ""
    if isinstance(obj, PCAProjection):  # components, mean and colour ranges
        return hashlib.sha1(repr(obj.to_dict()).encode()).hexdigest()
    return hashlib.sha1(np.ascontiguousarray(obj, np.float32).tobytes()).hexdigest()


class _TensorGuide:
    """The part of :class:`~napari_featup.source.Prepared` a LazyField reads, over the
    normalised, padded guidance tensor a FeatureField already holds."""

    def __init__(self, field: FeatureField):
        self.image = field.image
        self.source = type("Shape", (), {"shape": field.size})()

    def guidance(self, y0: int, y1: int, x0: int, x1: int, device=None) -> torch.Tensor:
        return self.image[:, :, y0:y1, x0:x1].to(device)


def normed(lowres: torch.Tensor, use_norm: bool) -> torch.Tensor:
    """FeatUp's channel norm where the upsampler uses it (per cell: commutes with tiling)."""
    return channel_norm(lowres) if use_norm else lowres


__all__ = ["HALO_CELLS", "LazyField", "blockwise", "halo_cells", "normed", "resize_bilinear"]
