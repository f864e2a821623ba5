"""Feature files other tools read: .npz, .zarr, .tif and .npy, with metadata.

* ``.npz``: one array per name plus ``metadata`` (a JSON string); ``np.load`` reads it.
* ``.zarr``: a group with one array per name and the metadata in the group's
  attributes under ``"napari_featup"``; zarr, dask and napari read it.
* ``.tif``/``.tiff``: one series per array (channel-first), the names and metadata as
  JSON in the first page's ImageDescription; tifffile and Fiji read it.
* ``.npy``: a single array, the metadata beside it in ``<file>.json``.

Writes go to a temporary name in the same folder and are renamed into place, so a
failed or interrupted write never leaves a half file under the final name, and an
existing file is only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatureFileError  # noqa: F401  (part of this module's interface)

FORMATS = (".npz", ".zarr", ".tif", ".tiff", ".npy")
#: key under which napari-featup keeps its metadata (file attributes, layer metadata)
META_KEY = "napari_featup"


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


def save_arrays(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write named arrays and metadata to ``path`` (format from its extension)."""
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
    targets = [path] + ([_sidecar(path)] if suffix == ".npy" else [])
    if not overwrite:
        for t in targets:
            if t.exists():
                raise FileExistsError(
                    f"{str(t)!r} exists; choose another name or pass overwrite=True "
                    "(--overwrite on the command line)"
                )
    if not path.parent.is_dir():
        raise FeatureFileError(f"folder {str(path.parent)!r} does not exist")
    meta = dict(metadata or {})
    meta["arrays"] = list(arrays)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        if suffix == ".npz":
            np.savez(tmp, metadata=np.array(_dumps(meta)), **arrays)
        elif suffix == ".zarr":
            _write_zarr(tmp, arrays, meta)
        elif suffix in (".tif", ".tiff"):
            _write_tif(tmp, arrays, meta)
        else:
            np.save(tmp, next(iter(arrays.values())))
            side_tmp = _sidecar(tmp)
            side_tmp.write_text(_dumps(meta))
        # Swap in: for a folder (zarr) an existing target must be moved aside first.
        if suffix == ".npy":
            os.replace(_sidecar(tmp), _sidecar(path))
        if path.is_dir():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)
        _remove(_sidecar(tmp))
    return path


def _write_zarr(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="w")
    for name, arr in arrays.items():
        chunks = tuple(min(s, c) for s, c in zip(arr.shape, (64,) + (512,) * (arr.ndim - 1)))
        z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
        z[...] = arr
    group.attrs[META_KEY] = json.loads(_dumps(meta))


def _write_tif(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    import tifffile

    big = sum(a.nbytes for a in arrays.values()) > 2**31
    with tifffile.TiffWriter(path, bigtiff=big) as tw:
        for i, (name, arr) in enumerate(arrays.items()):
            if arr.dtype == bool:
                arr = arr.astype(np.uint8)
            desc = _dumps(meta) if i == 0 else json.dumps({"array": name})
            tw.write(arr, description=desc, metadata=None, photometric="minisblack")


def _checked(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
    return path, suffix


def _unreadable(path: Path, exc: Exception) -> FeatureFileError:
    return FeatureFileError(f"{str(path)!r} is not a readable feature file: {exc}")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata written by :func:`save_arrays`, without reading the arrays
    (``{}`` for a file of a supported format that carries none)."""
    path, suffix = _checked(path)
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return json.loads(str(f["metadata"])) if "metadata" in f.files else {}
        if suffix == ".zarr":
            import zarr

            return dict(zarr.open_group(str(path), mode="r").attrs.get(META_KEY, {}))
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                desc = tf.pages[0].description if tf.pages else ""
            try:
                meta = json.loads(desc)
            except (json.JSONDecodeError, TypeError):
                return {}
            return meta if isinstance(meta, dict) else {}
        side = _sidecar(path)
        return json.loads(side.read_text()) if side.exists() else {}
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _unreadable(path, exc) from exc


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read the named arrays and metadata written by :func:`save_arrays`."""
    path, suffix = _checked(path)
    meta = read_metadata(path)
    names = meta.get("arrays")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files if k != "metadata"}
        elif suffix == ".zarr":
            import zarr

            group = zarr.open_group(str(path), mode="r")
            arrays = {k: np.asarray(group[k][...]) for k in names or sorted(group.array_keys())}
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = [s.asarray() for s in tf.series]
            arrays = dict(zip(names or [f"array{i}" for i in range(len(series))], series))
        else:
            arrays = {(names or ["array"])[0]: np.load(path, allow_pickle=False)}
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _unreadable(path, exc) from exc
    return arrays, meta


def save_features(
    path: str | os.PathLike,
    result: Any,
    overwrite: bool = False,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Save a :class:`~napari_featup.pipeline.FeatureResult` (low-res, full-res if
    materialised, PCA if fitted, metadata), and ``extra_arrays`` beside them (e.g. text
    heatmaps; not in a .npy file, which holds one array)."""
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


def load_features(path: str | os.PathLike) -> Any:
    """Read a file written by :func:`save_features` back into a ``FeatureResult``."""
    from .analysis import PCAProjection
    from .pipeline import FeatureResult

    arrays, meta = load_arrays(path)
    if "lowres" not in arrays and "highres" not in arrays:
        raise FeatureFileError(
            f"{str(path)!r} holds no 'lowres' or 'highres' features (arrays: {sorted(arrays)})"
        )
    pca = PCAProjection.from_dict(meta["pca"]) if isinstance(meta.get("pca"), dict) else None
    return FeatureResult(
        lowres=arrays.get("lowres"), highres=arrays.get("highres"), metadata=meta, pca=pca
    )
