"""An array of a stack's planes that stores only the planes computed (no Qt, no napari).

A :class:`PlaneStore` has the shape of a whole stack (``leading + plane_shape``), so a
napari layer shows it over the image stack, but memory is taken one plane at a time,
as planes are computed: a 200-slice stack with one computed slice costs one slice.
Planes not computed read as ``fill``. napari reads it through ``shape``, ``dtype``,
``ndim`` and ``__getitem__`` (its layer-data protocol).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

Index = tuple[int, ...]


class PlaneStore:
    """Planes ``leading`` (stack axes) x ``plane_shape``, stored per computed plane.

    ``store[idx] = plane`` stores plane ``idx`` (a full index into the stack axes);
    ``store[key]`` reads like a numpy array of the whole stack (planes not stored are
    ``fill``), so ``store[2]`` is plane 2 and ``store[:, 10]`` a cut through all planes.
    """

    def __init__(self, leading: tuple[int, ...], plane_shape: tuple[int, ...], dtype: Any, fill=0):
        self.leading = tuple(int(n) for n in leading)
        self.plane_shape = tuple(int(n) for n in plane_shape)
        self.dtype = np.dtype(dtype)
        self.fill = fill
        self.planes: dict[Index, np.ndarray] = {}

    # ------------------------------------------------------------ array protocol
    @property
    def shape(self) -> tuple[int, ...]:
        return self.leading + self.plane_shape

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def stored_bytes(self) -> int:
        """Memory held by the stored planes."""
        return sum(p.nbytes for p in self.planes.values())

    def _empty(self) -> np.ndarray:
        return np.full(self.plane_shape, self.fill, self.dtype)

    def plane(self, index: Index) -> np.ndarray:
        """Plane ``index`` (a fresh ``fill`` array when it is not stored)."""
        got = self.planes.get(tuple(index))
        return self._empty() if got is None else got

    def __setitem__(self, index: Any, value: Any) -> None:
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) != len(self.leading) or not all(isinstance(i, (int, np.integer)) for i in idx):
            raise IndexError(f"assign whole planes: an index of {len(self.leading)} int(s)")
        idx = tuple(int(i) for i in idx)
        if any(not 0 <= i < n for i, n in zip(idx, self.leading)):
            raise IndexError(f"plane {idx} is outside the stack of shape {self.leading}")
        plane = self.planes.get(idx)
        if plane is None:
            plane = self.planes[idx] = self._empty()
        plane[...] = value

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(key) + 1)
            key = key[:i] + fill + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        n = len(self.leading)
        lead, rest = key[:n], key[n:]
        if all(isinstance(k, (int, np.integer)) for k in lead):
            idx = tuple(int(k) % m for k, m in zip(lead, self.leading))
            return self.plane(idx)[rest]
        # a cut across planes (napari's 3-D view, thumbnails of other axes): dense
        grid = np.empty(self.leading, dtype=object)
        for idx in np.ndindex(*self.leading):
            grid[idx] = idx
        picked = grid[lead]
        out = np.stack([self.plane(i)[rest] for i in np.ravel(picked)])
        return out.reshape(np.shape(picked) + out.shape[1:])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[(slice(None),) * len(self.leading)]
        return out if dtype is None else out.astype(dtype)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (
            f"PlaneStore(shape={self.shape}, dtype={self.dtype}, "
            f"{len(self.planes)} of {int(np.prod(self.leading))} planes stored)"
        )


def plane_array(leading: tuple[int, ...], plane_shape: tuple[int, ...], dtype: Any) -> Any:
    """A numpy array for a single image (no stack axes), else a :class:`PlaneStore`."""
    if not leading:
        return np.zeros(plane_shape, dtype)
    return PlaneStore(leading, plane_shape, dtype)
