"""Every chunk of the zarr arrays we write is stored, so a missing one is damage.

zarr reads a chunk that is not in the store as the array's fill value (zeros), and by
default it does not store a chunk that equals the fill value. A deleted chunk file or a
copy cut short would then read as a block of zeros, silently. Arrays created by
:func:`create_array` store every chunk, and :func:`mark_complete` records that in the
group; a reader of a marked group calls :func:`check_chunks`, which raises
:class:`~napari_featup.errors.FeatureFileError` naming the missing chunk. Groups written
before the mark existed are not checked (an all-zero chunk may be missing there by
design).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureFileError

#: group attribute saying that every chunk of its arrays was written
CHUNKS_KEY = "napari_featup_chunks"


def create_array(group: Any, name: str, **kwargs: Any) -> Any:
    """``group.create_array`` storing every chunk, even one equal to the fill value."""
    return group.create_array(name, config={"write_empty_chunks": True}, **kwargs)


def mark_complete(attrs: dict) -> dict:
    """``attrs`` plus the mark (for the group's one attribute write)."""
    return dict(attrs, **{CHUNKS_KEY: "all"})


def is_marked(group: Any) -> bool:
    return group.attrs.get(CHUNKS_KEY) == "all"


def _chunk_file(array: Any, key: str) -> Path | None:
    root = getattr(array.store_path.store, "root", None)
    return None if root is None else Path(root) / array.store_path.path / key


def check_chunks(array: Any, where: str) -> None:
    """Raise :class:`FeatureFileError` when a chunk of ``array`` is not stored.

    ``where`` names the file or store for the message.
    """
    total = int(array.nchunks)
    if int(array.nchunks_initialized) >= total:
        return
    grid = tuple(int(v) for v in array.cdata_shape)
    missing = []
    for coords in np.ndindex(*grid):
        f = _chunk_file(array, array.metadata.encode_chunk_key(coords))
        if f is not None and not f.exists():
            missing.append(coords)
    name = array.basename or array.path
    if missing:
        coords = missing[0]
        key = array.metadata.encode_chunk_key(coords)
        region = ", ".join(
            f"{c * s}:{min((c + 1) * s, n)}" for c, s, n in zip(coords, array.chunks, array.shape)
        )
        more = f" (and {len(missing) - 1} more of {total})" if len(missing) > 1 else ""
        what = f"chunk {key!r} of array {name!r} (elements [{region}]) is missing{more}"
    else:
        what = f"{total - int(array.nchunks_initialized)} of {total} chunks of {name!r} are missing"
    raise FeatureFileError(
        f"{where}: {what}; zarr would read it as zeros. The store is damaged (a deleted "
        "chunk file or an incomplete copy): copy it again or recompute it"
    )
