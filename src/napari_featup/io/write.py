"""Atomic writes of feature files (temporary name, then rename; stale temporaries of
killed writers removed by the next write)."""

from __future__ import annotations

import glob
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureFileError
from ._format import META_KEY, _check_arrays, _dumps, _npy_identity, _remove, _sidecar, _suffix
from .zarr_chunks import create_array, mark_complete

_TEMP = r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?:tmp.*|old)"


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}")


def _writer_gone(pid: int, temp: Path) -> bool:
    """Whether the process that made ``temp`` has ended (so the temporary is stale)."""
    if os.name != "posix":
        # os.kill(pid, 0) would end the process on Windows: go by age instead.
        try:
            return time.time() - temp.stat().st_mtime > 24 * 3600
        except OSError:
            return False
    if pid == os.getpid():
        return False  # another thread of this process may be writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, owned by someone else
    return False


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries that killed writes of ``path`` left beside it.

    A write that is killed (SIGKILL, power loss) cannot clean up after itself; its
    temporaries carry its process id, and the next write of the same name removes
    those whose process has ended. Readers never open them (they are hidden files
    with names that are not the final one).

    Parameters
    ----------
    path : str or os.PathLike
        The final name of a file or store.

    Returns
    -------
    list of Path
        The temporaries removed.
    """
    path = Path(path)
    removed = []
    pattern = re.compile(_TEMP)
    for p in path.parent.glob(glob.escape(f".{path.name}.") + "*"):
        m = pattern.fullmatch(p.name)
        if m and m.group("name") == path.name and _writer_gone(int(m.group("pid")), p):
            try:
                _remove(p)
            except OSError:
                continue  # gone already, or not ours to remove: leave it
            removed.append(p)
    return removed


def save_arrays(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write named arrays and metadata to ``path`` (format from its extension).

    Atomic: the file is written under a temporary name beside ``path`` and renamed into
    place, so ``path`` holds either the complete new file or what it held before.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz``, ``.zarr``, ``.tif`` or ``.npy`` (one array; metadata in
        ``<file>.json``).
    arrays : dict of str to numpy.ndarray
        The arrays by name.
    metadata : dict, optional
        JSON-serialisable metadata.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    FeatureFileError
        Arrays, names or metadata the format cannot hold (before writing anything).
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    suffix = _suffix(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    if not arrays:
        raise FeatureFileError("nothing to save: no arrays given")
    if suffix == ".npy" and len(arrays) != 1:
        raise FeatureFileError(
            f".npy holds one array; got {sorted(arrays)}: save to .npz, .zarr or .tif instead"
        )
    if "metadata" in arrays:
        raise FeatureFileError("'metadata' is reserved and cannot name an array")
    _check_arrays(suffix, arrays)
    meta = dict(metadata or {})
    meta["arrays"] = list(arrays)
    if suffix == ".npy":
        # The array and its sidecar are two renames: a write killed between them pairs
        # one write's array with another's metadata. The sidecar names its array.
        meta["npy"] = _npy_identity(next(iter(arrays.values())))
    try:
        text = _dumps(meta)
    except (TypeError, ValueError) as exc:  # e.g. a circular reference
        raise FeatureFileError(f"metadata cannot be stored as JSON: {exc}") from exc
    clean_stale_temporaries(path)  # before the exists check: it may refuse the write
    if not overwrite:
        # a sidecar without its .npy is what a write killed between its two renames
        # leaves: it is replaced, not a reason to refuse
        targets = [path] if suffix != ".npy" or not path.exists() else [path, _sidecar(path)]
        for t in targets:
            if t.exists():
                raise FileExistsError(
                    f"{str(t)!r} exists; choose another name or pass overwrite=True "
                    "(--overwrite on the command line)"
                )
    if not path.parent.is_dir():
        raise FeatureFileError(f"folder {str(path.parent)!r} does not exist")
    tmp = _temp_name(path, f"tmp{suffix}")
    try:
        if suffix == ".npz":
            np.savez(tmp, metadata=np.array(text), **arrays)
        elif suffix == ".zarr":
            _write_zarr(tmp, arrays, json.loads(text))
        elif suffix in (".tif", ".tiff"):
            _write_tif(tmp, arrays, text)
        else:
            np.save(tmp, next(iter(arrays.values())), allow_pickle=False)
            _sidecar(tmp).write_text(text, encoding="utf-8")
        # Swap in. A folder (zarr) cannot be renamed over, and a .npy is two renames:
        # the old target is moved aside first, so a kill leaves no file under the final
        # name rather than a half-swapped one.
        old = None
        if path.exists() and (path.is_dir() or suffix == ".npy"):
            old = _temp_name(path, "old")
            os.replace(path, old)
        if suffix == ".npy":
            os.replace(_sidecar(tmp), _sidecar(path))
        os.replace(tmp, path)
        if old is not None:
            _remove(old)
    finally:
        _remove(tmp)
        _remove(_sidecar(tmp))
    return path


def _write_zarr(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, arr in arrays.items():
        chunks = tuple(
            max(1, min(s, c)) for s, c in zip(arr.shape, (64,) + (512,) * (arr.ndim - 1))
        )
        z = create_array(group, name, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
        z[...] = arr
    group.attrs.update(mark_complete({META_KEY: meta}))


def _write_tif(path: Path, arrays: dict[str, np.ndarray], text: str) -> None:
    import tifffile

    big = sum(a.nbytes for a in arrays.values()) > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tw:
        for i, (name, arr) in enumerate(arrays.items()):
            if arr.dtype == bool:
                arr = arr.astype(np.uint8)
            desc = text if i == 0 else json.dumps({"array": name})
            # metadata={} adds tifffile's own shape description (a second tag, after
            # ours), so arrays of equal shape stay separate series instead of merging.
            tw.write(arr, description=desc, metadata={}, photometric="minisblack")


def save_features(
    path: str | os.PathLike,
    result: Any,
    overwrite: bool = False,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Save a :class:`~napari_featup.pipeline.FeatureResult` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        As :func:`save_arrays`.
    result : FeatureResult
        Its low-res grid, full-res map if materialised, PCA if fitted and metadata.
    overwrite : bool
        Replace an existing file.
    extra_arrays : dict of str to numpy.ndarray, optional
        Written beside them (e.g. text heatmaps; not in a ``.npy`` file, which holds one
        array).

    Returns
    -------
    Path
        The file written.
    """
    arrays = {"lowres": result.lowres, "highres": getattr(result, "highres", None)}
    if Path(path).suffix.lower() == ".npy":
        arrays = (
            {"highres": arrays["highres"]}
            if arrays["highres"] is not None
            else {"lowres": arrays["lowres"]}
        )
    elif extra_arrays:
        arrays.update(extra_arrays)
    meta = dict(result.metadata)
    pca = getattr(result, "pca", None)
    if pca is not None:
        meta["pca"] = pca.to_dict()
    return save_arrays(path, arrays, meta, overwrite=overwrite)
