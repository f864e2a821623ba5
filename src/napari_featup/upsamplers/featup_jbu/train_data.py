"""Training images for the JBU trainer: arrays, files, folders, globs or a dask stack,
each turned into a normalised square crop the size the trainer asks for.

Every image goes through :func:`~napari_featup.preprocess.prepare_image` (grey,
RGB(A), uint8/uint16/float, the same intensity scaling as feature extraction), then is
resized so its short side is ``size`` (antialiased) and cropped to ``size x size``:
FeatUp's ``Resize(224) + CenterCrop(224)``, or a random crop (the default: more views of
a small set). Mixed sizes and layouts are fine; an unreadable file is an
:class:`~napari_featup.errors.ImageError` naming it, raised before training starts.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ImageError
from ...preprocess import normalize, prepare_image

#: file suffixes taken from a folder (others are skipped)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".npy")
#: resized images kept in memory up to this many bytes (beyond: re-read per draw)
_CACHE_BYTES = 512 << 20


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """An image file as an array (TIFF via tifffile, .npy, others via imageio).

    Raises
    ------
    ImageError
        The file does not exist or cannot be read as an image; the message names it.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"training image {str(p)!r} does not exist")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(p)
        if p.suffix.lower() == ".npy":
            return np.load(p, allow_pickle=False)
        import imageio.v3 as iio

        return iio.imread(p)
    except Exception as exc:  # noqa: BLE001 - every reader fails in its own way
        raise ImageError(
            f"cannot read training image {str(p)!r} ({type(exc).__name__}: {exc}); "
            "supported: TIFF, PNG, JPEG and other formats imageio reads, and .npy"
        ) from exc


def _expand(item: Any) -> list[Any]:
    """One input item -> image sources (arrays or paths): folders and globs expand."""
    if isinstance(item, (str, os.PathLike)):
        s = str(item)
        if os.path.isdir(s):
            files = sorted(str(p) for p in Path(s).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(
                    f"folder {s!r} holds no images ({', '.join(IMAGE_SUFFIXES)} files)"
                )
            return files
        if any(c in s for c in "*?["):
            files = sorted(glob.glob(s))
            if not files:
                raise ImageError(f"no files match {s!r}")
            return files
        return [s]
    if hasattr(item, "compute") and hasattr(item, "ndim"):  # a dask stack: one plane each
        return list(_planes(item))
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return list(_planes(item))
    return [item]


def _planes(arr: Any) -> Iterable[Any]:
    """A 2-D image, (H, W, 3|4) colour image, or a stack (N, H, W[, 3|4]) -> planes."""
    nd = arr.ndim
    rgb = arr.shape[-1] in (3, 4)
    if nd == 2 or (nd == 3 and rgb):
        yield arr
    elif nd in (3, 4):
        for i in range(arr.shape[0]):
            yield arr[i]
    else:
        raise ImageError(
            f"image of shape {tuple(arr.shape)}: expected (H, W), (H, W, 3|4) or a stack "
            "(N, H, W[, 3|4])"
        )


def collect_sources(images: Any) -> list[Any]:
    """Arrays, paths, folders, globs or a dask stack -> the list of image sources.

    Raises
    ------
    ImageError
        No images at all (empty list, empty folder, glob matching nothing).
    """
    if isinstance(images, (str, os.PathLike, np.ndarray, torch.Tensor)) or hasattr(
        images, "compute"
    ):
        items: Sequence[Any] = [images]
    else:
        items = list(images)
    out: list[Any] = []
    for it in items:
        out.extend(_expand(it))
    if not out:
        raise ImageError("no training images: pass arrays, image files, a folder or a glob")
    return out


def _resize_short(x01: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> short side ``size`` (bilinear, antialiased when shrinking)."""
    h, w = x01.shape[-2:]
    scale = size / min(h, w)
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    if out == (h, w):
        return x01
    return F.interpolate(x01[None], out, mode="bilinear", align_corners=False, antialias=scale < 1)[
        0
    ]


class ImageSet:
    """The training images, resized (short side ``size``), ready to crop.

    Parameters
    ----------
    images
        Anything :func:`collect_sources` takes.
    size
        Crop side in px.
    prepare
        Keyword arguments for :func:`~napari_featup.preprocess.prepare_image`.
    """

    def __init__(self, images: Any, size: int, prepare: dict | None = None):
        self.sources = collect_sources(images)
        self.size = int(size)
        self.prepare = dict(prepare or {})
        self._cache: dict[int, torch.Tensor] = {}
        self.shapes: list[tuple[int, ...]] = []
        used = 0
        # every image read once now: a bad file fails before training, not at step 900
        for i in range(len(self.sources)):
            t = self._load(i)
            self.shapes.append(tuple(self._raw_shape))
            if used + t.numel() * 4 <= _CACHE_BYTES:
                self._cache[i] = t
                used += t.numel() * 4

    def __len__(self) -> int:
        return len(self.sources)

    def describe(self, i: int) -> str:
        """A short name of image ``i`` (its file, or its index)."""
        s = self.sources[i]
        return str(s) if isinstance(s, str) else f"image {i}"

    def _load(self, i: int) -> torch.Tensor:
        src = self.sources[i]
        arr = read_image_file(src) if isinstance(src, str) else src
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
        self._raw_shape = np.shape(arr)
        try:
            x01, _ = prepare_image(arr, **self.prepare)
        except ImageError as exc:
            raise ImageError(f"{self.describe(i)}: {exc}") from exc
        return _resize_short(torch.from_numpy(x01), self.size)

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` resized, (3, H', W') in [0, 1]."""
        t = self._cache.get(i)
        return t if t is not None else self._load(i)

    def crop(self, i: int, gen: torch.Generator | None) -> torch.Tensor:
        """A normalised ``size x size`` crop of image ``i``: random with ``gen``, else the
        centre (FeatUp's ``CenterCrop``)."""
        x = self.image(i)
        h, w = x.shape[-2:]
        s = self.size
        if gen is None:
            y0, x0 = (h - s) // 2, (w - s) // 2
        else:
            y0 = int(torch.randint(0, h - s + 1, (), generator=gen))
            x0 = int(torch.randint(0, w - s + 1, (), generator=gen))
        return normalize(x[:, y0 : y0 + s, x0 : x0 + s])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation fixed by (seed, epoch), so a resumed
    run sees the same images in the same order as an uninterrupted one."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def batch_indices(n: int, seed: int, step: int, batch: int) -> list[int]:
    """Image indices of training step ``step``: consecutive draws from the epoch orders."""
    out = []
    for k in range(step * batch, (step + 1) * batch):
        out.append(epoch_order(n, seed, k // n)[k % n])
    return out


__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSet",
    "batch_indices",
    "collect_sources",
    "epoch_order",
    "read_image_file",
]
