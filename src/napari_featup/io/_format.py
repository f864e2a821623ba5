"""What the feature-file formats share: names, suffixes, metadata JSON, sidecars and
the checks on arrays before a write."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureFileError

FORMATS = (".npz", ".zarr", ".tif", ".tiff", ".npy")
#: key under which napari-featup keeps its metadata (file attributes, layer metadata)
META_KEY = "napari_featup"
#: marks FeatUp's files before the format's extension (``x.featup.npz``), so napari
#: opens them with this plugin and plain ``.npz``/``.tif``/``.npy`` files as before
FEATUP_SUFFIX = ".featup"


def featup_path(path: str | os.PathLike) -> Path:
    """``path`` with :data:`FEATUP_SUFFIX` before its extension.

    Parameters
    ----------
    path : str or os.PathLike
        ``x.npz`` gives ``x.featup.npz``; a path that has the suffix already is kept.

    Returns
    -------
    Path
    """
    path = Path(path)
    if path.suffixes[-2:-1] == [FEATUP_SUFFIX]:
        return path
    stem = path.name[: len(path.name) - len(path.suffix)]
    return path.with_name(stem + FEATUP_SUFFIX + path.suffix)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise FeatureFileError(
            f"cannot tell the format of {str(path)!r}: use one of {', '.join(FORMATS)}"
        )
    return suffix


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    return repr(obj)


def _dumps(metadata: dict) -> str:
    return json.dumps(metadata, default=_json_default)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _npy_identity(arr: np.ndarray, with_crc: bool = True) -> dict:
    """Shape, dtype and CRC-32 of an array's bytes (one pass, about 1 GB/s)."""
    ident: dict = {"shape": list(arr.shape), "dtype": arr.dtype.str}
    if with_crc:
        data = np.ascontiguousarray(arr)
        ident["crc32"] = zlib.crc32(memoryview(data).cast("B")) if data.size else 0
    return ident


def _check_arrays(suffix: str, arrays: dict[str, np.ndarray]) -> None:
    """Refuse, before anything is written, arrays or names a format cannot hold."""
    for name, arr in arrays.items():
        if (
            not isinstance(name, str)
            or not name
            or name in (".", "..")
            or name.startswith("__")  # zarr reserves these
            or any(c in name for c in "/\\\0")
        ):
            raise FeatureFileError(
                f"array name {name!r} cannot be stored: use a non-empty name without '/' "
                "or '\\' (letters, digits, '_', '-', '.')"
            )
        if arr.dtype.kind not in "biuf":
            raise FeatureFileError(
                f"array {name!r} has dtype {arr.dtype}; feature files hold boolean, integer "
                "or float arrays"
            )
        if suffix in (".tif", ".tiff") and (arr.ndim < 2 or arr.size == 0):
            raise FeatureFileError(
                f"array {name!r} has shape {arr.shape}; TIFF holds non-empty arrays of 2 "
                "or more dimensions: save to .npz, .zarr or .npy instead"
            )


#: temporaries of a write to NAME: ``.NAME.<pid>-<8 hex>.tmp<suffix>`` (and its ``.json``
#: for .npy) and ``.NAME.<pid>-<8 hex>.old`` (a replaced .zarr or .npy on its way out)
