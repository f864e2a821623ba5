"""Images read by regions, never whole: numpy, dask, zarr, OME-Zarr and TIFF.

:class:`ImageSource` is one 2-D plane (grey, RGB(A) or multichannel) of an array-like
that supports slicing (numpy, dask, zarr, tifffile's zarr view of a TIFF). Regions are
read with the reflect padding an untiled run applies, preprocessed with one fixed
intensity mapping (:func:`preprocessing_of`, from a strided subsample of the image,
exact for images up to :data:`STATS_PIXELS`), and resampled to the working scale by
exact area weights, so every tile sees what a whole-image run would.

:func:`open_image` opens a path: ``.zarr`` (an array, or an OME-Zarr multiscale group:
the level nearest the working scale that keeps cells on whole pixels), ``.tif``/``.tiff``
through tifffile's zarr interface (pyramids too), ``.npy`` memory-mapped, other formats
through imageio.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ImageError
from .preprocess import Preprocessing, normalize, prepare_image

#: images up to this many pixels get their intensity limits from every pixel (as an
#: untiled run); larger ones from a strided subsample of about this many pixels
STATS_PIXELS = 4_000_000


def _layout(shape: tuple[int, ...], rgb: bool | None, channel_axis: int | None) -> str:
    """The layout :func:`~napari_featup.preprocess.to_channels_last` would give."""
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape) or len(shape) != 3:
            raise ImageError(
                f"channel_axis={channel_axis} does not fit an image of shape {shape}: pass one "
                "2-D plane with its channel axis"
            )
        return "grey" if shape[channel_axis] == 1 else "multichannel"
    if len(shape) == 2:
        return "grey"
    if len(shape) == 3 and (rgb or (rgb is None and shape[-1] in (3, 4))):
        if shape[-1] not in (3, 4):
            raise ImageError(f"rgb=True needs a last axis of 3 or 4, got shape {shape}")
        return "rgb" if shape[-1] == 3 else "rgba"
    raise ImageError(
        f"image has shape {shape}: expected (H, W) grey, (H, W, 3|4) RGB(A), or a "
        "multichannel image with channel_axis=; for a stack pass one plane at a time"
    )


def _pad_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Positions mapped into [0, n) by reflection (edge not repeated), as ``F.pad``."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    i = np.mod(idx, period)
    return np.where(i >= n, period - i, i)


@dataclass
class ImageSource:
    """One 2-D plane of an array-like, read by regions.

    ``data``: the array (numpy, dask, zarr, ...); ``fixed``: axis -> index for the
    stack axes that select the plane; ``channel_axis``: the axis of ``data`` holding
    channels (None: none, or the last axis as RGB(A) colour when ``layout`` says so).
    ``origin``: where the data came from (path, pyramid level), for the metadata.
    """

    data: Any
    layout: str
    fixed: dict[int, int] = field(default_factory=dict)
    channel_axis: int | None = None
    origin: dict = field(default_factory=dict)

    @property
    def _free(self) -> list[int]:
        return [a for a in range(len(self.data.shape)) if a not in self.fixed]

    @property
    def _spatial(self) -> tuple[int, int]:
        axes = [a for a in self._free if a != self.channel_axis]
        if self.layout in ("rgb", "rgba") and self.channel_axis is None:
            axes = axes[:-1]
        return axes[-2], axes[-1]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the plane."""
        ay, ax = self._spatial
        return int(self.data.shape[ay]), int(self.data.shape[ax])

    @property
    def dtype(self) -> np.dtype:
        """The stored pixel dtype."""
        return np.dtype(self.data.dtype)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Raw pixels of a region inside the plane, channels last: (r, c, K)."""
        sel: list[Any] = [self.fixed.get(a, slice(None)) for a in range(len(self.data.shape))]
        ay, ax = self._spatial
        sel[ay], sel[ax] = rows, cols
        block = self.data[tuple(sel)]
        if hasattr(block, "compute") and not isinstance(block, np.ndarray):
            block = block.compute()
        block = np.asarray(block)
        if self.channel_axis is not None:
            block = np.moveaxis(block, self._free.index(self.channel_axis), -1)
        elif block.ndim == 2:
            block = block[..., None]
        return block

    def read_padded(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Region ``[y0, y1) x [x0, x1)`` (r, c, K); positions outside the plane are
        reflected, as the reflect padding of an untiled run."""
        h, w = self.shape
        ys, xs = _pad_index(np.arange(y0, y1), h), _pad_index(np.arange(x0, x1), w)
        a, b, c, d = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        block = self.read(slice(a, b), slice(c, d))
        if (y0, y1, x0, x1) == (a, b, c, d):
            return block
        return block[ys - a][:, xs - c]

    def subsample(self, max_pixels: int = STATS_PIXELS) -> tuple[np.ndarray, int]:
        """Every ``step``-th pixel of every ``step``-th row (channels last), read in
        bands so memory follows the subsample; ``step`` 1 when the plane is small."""
        h, w = self.shape
        step = max(1, int(np.ceil(np.sqrt(h * w / max_pixels))))
        if step == 1:
            return self.read(slice(0, h), slice(0, w)), 1
        band = max(step, (64 << 20) // max(1, w * self.dtype.itemsize) // step * step)
        parts = [
            self.read(slice(r, min(h, r + band)), slice(0, w))[::step, ::step]
            for r in range(0, h, band)
        ]
        return np.concatenate(parts, axis=0), step


def as_source(
    image: Any,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    plane: Sequence[int] = (),
) -> ImageSource:
    """An :class:`ImageSource` over ``image`` (an array-like or an ImageSource).

    ``plane`` fixes the leading (stack) axes; ``rgb`` and ``channel_axis`` (an axis of
    the plane) are as in :func:`~napari_featup.preprocess.prepare_image`.
    """
    if isinstance(image, ImageSource):
        return image
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    fixed = {a: int(v) for a, v in enumerate(plane)}
    shape = tuple(int(v) for v in image.shape[len(fixed) :])
    if not shape or any(n == 0 for n in shape):
        raise ImageError(f"image is empty (shape {shape})")
    layout = _layout(shape, rgb, channel_axis)
    dt = np.dtype(image.dtype)
    if np.issubdtype(dt, np.complexfloating):
        raise ImageError("image is complex-valued; pass its magnitude or real part")
    if not (np.issubdtype(dt, np.number) or dt.kind == "b"):
        raise ImageError(f"image has dtype {dt}; expected numbers or booleans")
    axis = None if channel_axis is None else channel_axis % len(shape) + len(fixed)
    return ImageSource(image, layout, fixed, axis)


@dataclass
class Prepared:
    """A source with its fixed intensity mapping: regions as normalised tensors."""

    source: ImageSource
    record: Preprocessing

    def region01(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """(3, r, c) float32 in [0, 1] of a (reflect-padded) region."""
        raw = self.source.read_padded(y0, y1, x0, x1)
        limits = self.record.limits
        per_channel = self.record.extra.get("channel_limits")
        if per_channel:  # one range per channel (multichannel scaled from its data)
            raw = raw.astype(np.float32)
            for k, (lo, hi) in enumerate(per_channel):
                span = hi - lo
                raw[..., k] = 0.5 if span <= 0 else np.clip((raw[..., k] - lo) / span, 0, 1)
            limits = (0.0, 1.0)
        out, _ = prepare_image(
            raw,
            channel_axis=-1,
            channels=self.record.channels,
            scaling="contrast_limits",
            contrast_limits=limits,
        )
        return out

    def guidance(self, y0: int, y1: int, x0: int, x1: int, device=None) -> torch.Tensor:
        """(1, 3, r, c) ImageNet-normalised region at full resolution."""
        return normalize(torch.from_numpy(self.region01(y0, y1, x0, x1)).to(device))[None]

    def working(
        self, i0: int, i1: int, j0: int, j1: int, pixels_per_patch: int, patch_size: int, device
    ) -> torch.Tensor:
        """Normalised input of cells [i0, i1) x [j0, j1) at the working scale.

        At the native scale (s == p) a tile at the image's bottom or right edge stops at
        the image, and the backbone pads it as its family does (reflect for ViTs; a
        ResNet runs unpadded, as in FeatUp), exactly as an untiled run; at other scales
        the tile is (1, 3, (i1-i0)*p, (j1-j0)*p), resampled from the reflect-padded
        image (cells cover whole pixels of it).
        """
        s, p = int(pixels_per_patch), int(patch_size)
        if s == p:
            h, w = self.source.shape
            return self.guidance(i0 * s, min(h, i1 * s), j0 * s, min(w, j1 * s), device)
        if s > p:  # area weights: each working pixel averages the image pixels it covers
            x = torch.from_numpy(self.region01(i0 * s, i1 * s, j0 * s, j1 * s))
            my, mx = area_matrix(i1 - i0, s, p), area_matrix(j1 - j0, s, p)
        else:  # finer than the image: linear interpolation, one pixel of context
            x = torch.from_numpy(self.region01(i0 * s - 1, i1 * s + 1, j0 * s - 1, j1 * s + 1))
            my = linear_matrix(i0, i1, s, p, self.source.shape[0])
            mx = linear_matrix(j0, j1, s, p, self.source.shape[1])
        x = torch.einsum("yr,crk,xk->cyx", my, x, mx)
        return normalize(x.to(device))[None]


def area_matrix(cells: int, s: int, p: int) -> torch.Tensor:
    """(cells*p, cells*s) weights: working pixel y averages image pixels overlapping
    ``[y*s/p, (y+1)*s/p)`` (exact, and the same for every tile: cells are aligned)."""
    k = s / p
    y = torch.arange(cells * p, dtype=torch.float64)[:, None]
    x = torch.arange(cells * s, dtype=torch.float64)[None]
    lo, hi = torch.maximum(y * k, x), torch.minimum((y + 1) * k, x + 1)
    return ((hi - lo).clamp(min=0) / k).float()


def linear_matrix(i0: int, i1: int, s: int, p: int, n_image: int) -> torch.Tensor:
    """(cells*p, cells*s + 2) linear-interpolation weights from image rows
    ``[i0*s - 1, i1*s + 1)`` to working rows of cells [i0, i1) (centres aligned,
    positions clamped to the image as ``F.interpolate(align_corners=False)``)."""
    k = s / p
    y = torch.arange(i0 * p, i1 * p, dtype=torch.float64)
    pos = ((y + 0.5) * k - 0.5).clamp(0, max(0, n_image - 1))
    a = pos.floor()
    f = pos - a
    m = torch.zeros(len(y), (i1 - i0) * s + 2, dtype=torch.float64)
    col = (a - (i0 * s - 1)).long()
    rows = torch.arange(len(y))
    m[rows, col] += 1 - f
    m[rows, (col + 1).clamp(max=m.shape[1] - 1)] += f
    return m.float()


def preprocessing_of(
    source: ImageSource,
    *,
    channels: Sequence[Any] | None = None,
    scaling: str = "auto",
    contrast_limits: Sequence[float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> Prepared:
    """Fix the intensity mapping of ``source`` as :func:`prepare_image` would choose it
    for the whole image (from a strided subsample when the image is large)."""
    sub, step = source.subsample()
    if source.layout == "grey" and source.channel_axis is None:
        sub_img, kw = sub[..., 0], {}
    elif source.layout in ("rgb", "rgba"):
        sub_img, kw = sub, {"rgb": True}
    else:
        sub_img, kw = sub, {"channel_axis": -1}
    _, record = prepare_image(
        sub_img,
        channels=channels,
        scaling=scaling,
        contrast_limits=contrast_limits,
        percentiles=percentiles,
        **kw,
    )
    record = replace(record, input_shape=tuple(source.data.shape), extra=dict(record.extra))
    if step > 1:
        record.extra["limits_from"] = f"every {step}th pixel of every {step}th row"
    return Prepared(source, record)


# ------------------------------------------------------------------------------ files


def _zarr_multiscale(group: Any) -> tuple[list[str], list[float], dict] | None:
    """Level paths and yx downsampling factors of an OME-Zarr (v0.4 or v0.5) group."""
    attrs = dict(group.attrs)
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        return None
    ms = ms[0]
    paths = [str(ds["path"]) for ds in ms["datasets"]]
    scales = [
        next(
            (t["scale"] for t in ds.get("coordinateTransformations", []) if t["type"] == "scale"),
            None,
        )
        for ds in ms["datasets"]
    ]
    if all(sc is not None for sc in scales):
        factors = [float(sc[-1]) / float(scales[0][-1]) for sc in scales]
    else:  # no transforms: factors from the shapes (odd sizes round: 1001 -> 501 is 2x)
        factors = _shape_factors([group[p].shape for p in paths])
    return paths, factors, {"axes": ms.get("axes"), "datasets": ms["datasets"]}


def _shape_factors(shapes: Sequence[tuple[int, ...]]) -> list[float]:
    """Downsampling factors of pyramid levels from their widths (rounded to whole
    numbers within 2%, as odd sizes give)."""
    w0 = shapes[0][-1]
    out = []
    for sh in shapes:
        f = w0 / sh[-1]
        out.append(float(round(f)) if abs(f - round(f)) < 0.02 * f else f)
    return out


def pick_level(factors: Sequence[float], pixels_per_patch: int, patch_size: int) -> int:
    """The coarsest pyramid level not coarser than the working scale whose factor
    divides the pixels per patch (so cells stay on whole pixels of that level)."""
    want = pixels_per_patch / patch_size
    best = 0
    for i, f in enumerate(factors):
        fi = round(f)
        if abs(f - fi) < 1e-6 and fi <= want + 1e-9 and pixels_per_patch % fi == 0:
            best = i if fi >= round(factors[best]) else best
    return best


def open_image(
    path: str | os.PathLike,
    *,
    pixels_per_patch: int | None = None,
    patch_size: int | None = None,
    level: int | None = None,
) -> tuple[Any, dict]:
    """Open an image file lazily: ``(array, origin)``.

    ``array`` supports slicing without reading the whole file (zarr, a memory map, or
    numpy for small formats). For a multiscale file (OME-Zarr, pyramidal TIFF) the level
    is ``level`` or, given the working scale, :func:`pick_level`; ``origin`` records
    the path, level and its factor (level pixels are ``factor`` full-res pixels).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    origin: dict = {"path": str(path)}
    if suffix in (".zarr", ".tif", ".tiff", ".ome") or path.is_dir():
        import zarr

        if suffix in (".tif", ".tiff"):
            import tifffile

            node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        else:
            node = zarr.open(str(path), mode="r")
        if hasattr(node, "shape"):
            return node, origin
        ms = _zarr_multiscale(node)
        if ms is None:
            # a pyramid without OME metadata: its arrays, largest first
            keys = sorted(node.array_keys(), key=lambda k: -int(np.prod(node[k].shape)))
            if not keys:
                raise ImageError(f"{str(path)!r} holds no image array")
            paths, factors = keys, _shape_factors([node[k].shape for k in keys])
            info: dict = {}
        else:
            paths, factors, info = ms
        if level is None:
            level = (
                pick_level(factors, pixels_per_patch, patch_size)
                if pixels_per_patch and patch_size
                else 0
            )
        origin.update(level=int(level), level_factor=float(factors[level]), **info)
        return node[paths[level]], origin
    if suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False), origin
    import imageio.v3 as iio

    return iio.imread(path), origin
