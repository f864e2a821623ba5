"""Checked reads of feature files: damaged, mislabelled or foreign files raise
:class:`~napari_featup.errors.FeatureFileError` saying what is wrong."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureFileError
from ._format import META_KEY, _npy_identity, _sidecar, _suffix
from .zarr_chunks import check_chunks, is_marked


def _checked(path: str | os.PathLike) -> tuple[Path, str]:
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
    return path, suffix


def _unreadable(path: Path, exc: BaseException) -> FeatureFileError:
    if isinstance(exc, MemoryError):
        why = "it declares arrays too large to load (damaged, or too big for this machine)"
    else:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return FeatureFileError(f"{str(path)!r} is not a readable feature file ({why})")


def _library_call(path: Path, fn: Callable[[], Any]) -> Any:
    """Run a reading library on ``path``; whatever it raises becomes a FeatureFileError.

    numpy, zipfile, zarr, its codecs and tifffile each fail in their own way on damaged
    input (EOFError, BadZipFile, SyntaxError from a header, RuntimeError from zstd, ...),
    so everything they raise is taken to mean "this file is damaged or not ours".
    """
    try:
        return fn()
    except FeatureFileError:
        raise
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - see the docstring
        raise _unreadable(path, exc) from exc


def _parse_meta(path: Path, text: Any, where: str) -> dict:
    """A JSON object from ``text`` (the metadata ``where`` says it came from)."""
    if not isinstance(text, (str, bytes, bytearray)):
        meta = text  # already decoded (zarr attributes)
    else:
        try:
            meta = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise FeatureFileError(
                f"{str(path)!r}: the metadata in {where} is not valid JSON ({exc})"
            ) from exc
    if not isinstance(meta, dict):
        raise FeatureFileError(
            f"{str(path)!r}: the metadata in {where} is a {type(meta).__name__}, not a JSON object"
        )
    return meta


def _open_npz(path: Path) -> Any:
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise FeatureFileError(f"{str(path)!r} is a single .npy array, not an .npz archive")
    return f


def _npz_metadata(path: Path) -> dict:
    with _open_npz(path) as f:
        if "metadata" not in f.files:
            return {}
        raw = f["metadata"]
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise FeatureFileError(
            f"{str(path)!r}: its 'metadata' entry is a {raw.dtype} array of shape "
            f"{raw.shape}, not a JSON string"
        )
    return _parse_meta(path, str(raw), "its 'metadata' entry")


def _zarr_group(path: Path) -> Any:
    import zarr

    if not path.is_dir():
        raise FeatureFileError(f"{str(path)!r} is a file; a .zarr store is a folder")
    return zarr.open_group(str(path), mode="r")


def _tif_metadata(path: Path) -> dict:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        desc = tf.pages[0].description if tf.pages else ""
    try:
        meta = json.loads(desc)
    except (json.JSONDecodeError, TypeError):
        return {}  # a TIFF from elsewhere: its description is not ours
    return meta if isinstance(meta, dict) else {}


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata written by :func:`save_arrays`, without reading the arrays.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz``, ``.zarr``, ``.tif`` or ``.npy`` feature file.

    Returns
    -------
    dict
        ``{}`` for a file of a supported format that carries none.
    """
    path, suffix = _checked(path)
    if suffix == ".npz":
        return _library_call(path, lambda: _npz_metadata(path))
    if suffix == ".zarr":
        attrs = _library_call(path, lambda: dict(_zarr_group(path).attrs))
        if META_KEY not in attrs:
            return {}
        return _parse_meta(path, attrs[META_KEY], f"the attribute {META_KEY!r}")
    if suffix in (".tif", ".tiff"):
        return _library_call(path, lambda: _tif_metadata(path))
    side = _sidecar(path)
    if not side.exists():
        return {}
    text = _library_call(path, lambda: side.read_text(encoding="utf-8"))
    return _parse_meta(path, text, f"{side.name!r}")


def _array_names(path: Path, meta: dict) -> list[str] | None:
    names = meta.get("arrays")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FeatureFileError(
            f"{str(path)!r}: metadata 'arrays' must list the array names, got {names!r}"
            + _version_note(meta)
        )
    return names


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read the named arrays and metadata written by :func:`save_arrays`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz``, ``.zarr``, ``.tif`` or ``.npy`` feature file.

    Returns
    -------
    arrays : dict of str to numpy.ndarray
    metadata : dict

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    FeatureFileError
        Truncated, damaged or mislabelled files, or metadata that is not a dict.
    """
    path, suffix = _checked(path)
    meta = read_metadata(path)
    names = _array_names(path, meta)
    if suffix == ".npz":

        def read() -> dict[str, np.ndarray]:
            with _open_npz(path) as f:
                return {k: f[k] for k in f.files if k != "metadata"}

    elif suffix == ".zarr":

        def read() -> dict[str, np.ndarray]:
            group = _zarr_group(path)
            keys = sorted(group.array_keys())
            missing = sorted(set(names or ()) - set(keys))
            if missing:
                raise FeatureFileError(
                    f"{str(path)!r}: arrays {missing} named in its metadata are missing "
                    f"(the store holds {keys})"
                )
            if is_marked(group):
                for k in names or keys:
                    check_chunks(group[k], repr(str(path)))
            return {k: np.asarray(group[k][...]) for k in names or keys}

    elif suffix in (".tif", ".tiff"):

        def read() -> dict[str, np.ndarray]:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = [s.asarray() for s in tf.series]
            if names is not None and len(names) != len(series):
                raise FeatureFileError(
                    f"{str(path)!r}: its metadata names {len(names)} array(s) but the file "
                    f"holds {len(series)} series"
                )
            return dict(zip(names or [f"array{i}" for i in range(len(series))], series))

    else:

        def read() -> dict[str, np.ndarray]:
            if names is not None and len(names) != 1:
                raise FeatureFileError(
                    f"{str(path)!r}: a .npy file holds one array, its metadata names {names}"
                )
            arr = np.load(path, allow_pickle=False)
            if not isinstance(arr, np.ndarray):
                raise FeatureFileError(f"{str(path)!r} is an .npz archive, not a .npy array")
            want = meta.get("npy")
            if isinstance(want, dict) and want != _npy_identity(arr, with_crc="crc32" in want):
                raise FeatureFileError(
                    f"{str(path)!r} holds a {arr.dtype.str} array of shape {arr.shape} but "
                    f"its sidecar {_sidecar(path).name!r} describes {want}: they come from "
                    "different writes (an interrupted overwrite?); write the file again"
                )
            return {(names or ["array"])[0]: arr}

    return _library_call(path, read), meta


def _version_note(meta: dict) -> str:
    """A hint for files written by a newer napari-featup ('' otherwise)."""
    from .. import __version__

    theirs = meta.get("napari_featup_version")

    def key(v: Any) -> tuple[int, ...]:
        parts = []
        for part in str(v).split(".")[:3]:
            digits = "".join(itertools.takewhile(str.isdigit, part))
            parts.append(int(digits) if digits else 0)
        return tuple(parts)

    if isinstance(theirs, str) and key(theirs) > key(__version__):
        return (
            f" (written by napari-featup {theirs}, newer than this {__version__}: "
            "upgrading may read it)"
        )
    return ""


def feature_arrays(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict
) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """Check and return the feature maps and PCA of a file's arrays and metadata.

    Parameters
    ----------
    path : str or os.PathLike
        The file, for messages.
    arrays : dict of str to numpy.ndarray
        As :func:`load_arrays` returns them.
    meta : dict
        The file's metadata.

    Returns
    -------
    lowres, highres : numpy.ndarray or None
        Real (C, h, w) arrays with the same C.
    pca : PCAProjection or None
        The stored projection, fitted on C channels.

    Raises
    ------
    FeatureFileError
        Anything else, named.
    """
    from ..analysis import PCAProjection

    note = _version_note(meta)
    maps = {k: arrays.get(k) for k in ("lowres", "highres")}
    if all(v is None for v in maps.values()):
        raise FeatureFileError(
            f"{str(path)!r} holds no 'lowres' or 'highres' features "
            f"(arrays: {sorted(arrays)}){note}"
        )
    for name, arr in maps.items():
        if arr is not None and (arr.ndim != 3 or arr.size == 0 or arr.dtype.kind not in "fiu"):
            raise FeatureFileError(
                f"{str(path)!r}: '{name}' is a {arr.dtype} array of shape {arr.shape}; "
                f"expected (channels, height, width) real numbers{note}"
            )
    dims = {arr.shape[0] for arr in maps.values() if arr is not None}
    if len(dims) != 1:
        raise FeatureFileError(
            f"{str(path)!r}: 'lowres' and 'highres' have different channel counts "
            f"({maps['lowres'].shape[0]} and {maps['highres'].shape[0]}){note}"
        )
    channels = next(iter(dims))
    pca = None
    raw = meta.get("pca")
    if raw is not None:
        try:
            if not isinstance(raw, dict):
                raise TypeError(f"a {type(raw).__name__}, not a dict")
            pca = PCAProjection.from_dict(raw)
            if pca.components.ndim != 2:
                raise ValueError(f"components has shape {pca.components.shape}, not (K, C)")
            k, c = pca.components.shape
            shapes = {
                "mean": (c,),
                "low": (k,),
                "high": (k,),
                "explained_variance_ratio": (k,),
            }
            for field_name, shape in shapes.items():
                if getattr(pca, field_name).shape != shape:
                    raise ValueError(f"{field_name} has shape {getattr(pca, field_name).shape}")
            if c != channels:
                raise ValueError(f"fitted on {c} channels, the features have {channels}")
            if not all(np.isfinite(v).all() for v in vars(pca).values()):
                raise ValueError("it holds NaN or infinite values")
        except (TypeError, ValueError) as exc:
            raise FeatureFileError(
                f"{str(path)!r}: metadata 'pca' is not a PCA of these features ({exc}){note}"
            ) from exc
    return maps["lowres"], maps["highres"], pca


def load_features(path: str | os.PathLike) -> Any:
    """Read a file written by :func:`save_features` back into a ``FeatureResult``.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz``, ``.zarr``, ``.tif`` or ``.npy`` feature file.

    Returns
    -------
    FeatureResult

    Raises
    ------
    FeatureFileError
        Not a feature file (or damaged), or a stack's export (read it with
        :func:`load_feature_stack`).
    """
    from ..pipeline import FeatureResult

    arrays, meta = load_arrays(path)
    if meta.get("plane_index") is not None:
        raise FeatureFileError(
            f"{str(path)!r} is a stack's export ({len(meta['plane_index'])} planes of a stack "
            f"of shape {meta.get('stack_shape')!r}); read it with "
            "napari_featup.io.load_feature_stack(path), which returns one result per plane"
        )
    lowres, highres, pca = feature_arrays(path, arrays, meta)
    return FeatureResult(lowres=lowres, highres=highres, metadata=meta, pca=pca)


def load_feature_stack(path: str | os.PathLike) -> dict[tuple[int, ...], Any]:
    """Read a stack's export (the widget's Export of a z-stack or time series) plane by
    plane.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz``, ``.zarr``, ``.tif`` or ``.npy`` feature file.

    Returns
    -------
    dict of tuple of int to FeatureResult
        ``{plane index: result}`` in the file's order; the index is the position along
        the stack's leading axes (``metadata["stack_shape"]``), each result's maps are
        (C, h, w) and its metadata is the file's with ``plane_index`` set. A single
        image's file gives one entry under the key ``()``.

    Raises
    ------
    FeatureFileError
        A file that is not a feature file, or planes that do not match the metadata.
    """
    from ..pipeline import FeatureResult

    arrays, meta = load_arrays(path)
    planes = meta.get("plane_index")
    if planes is None:
        return {(): load_features(path)}
    check_planes(path, arrays, meta)
    out = {}
    for i, index in enumerate(planes):
        plane = {k: v[i] for k, v in arrays.items() if k in ("lowres", "highres")}
        lowres, highres, pca = feature_arrays(path, plane, meta)
        out[tuple(index)] = FeatureResult(
            lowres=lowres, highres=highres, metadata={**meta, "plane_index": list(index)}, pca=pca
        )
    return out


def check_planes(p: str | os.PathLike, arrays: dict, meta: dict) -> None:
    """Check a stack's export: ``plane_index`` lists one index into ``stack_shape`` per
    entry of every array's first axis.

    Parameters
    ----------
    p : str or os.PathLike
        The file, for messages.
    arrays : dict
        Its arrays.
    meta : dict
        Its metadata.

    Raises
    ------
    FeatureFileError
        Naming what does not match.
    """
    planes, shape = meta.get("plane_index"), meta.get("stack_shape")
    ok = (
        isinstance(shape, list)
        and len(shape) >= 1
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
        and isinstance(planes, list)
        and len(planes) >= 1
        and all(
            isinstance(i, list)
            and len(i) == len(shape)
            and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n
                for v, n in zip(i, shape)
            )
            for i in planes
        )
    )
    if not ok:
        raise FeatureFileError(
            f"{str(p)!r}: metadata 'plane_index' {planes!r} does not index a stack of shape "
            f"{shape!r}"
        )
    for key, arr in arrays.items():
        if key in ("lowres", "highres", "pca", "similarity", "text_similarity", "text_labels") and (
            arr.ndim < 1 or arr.shape[0] != len(planes)
        ):
            raise FeatureFileError(
                f"{str(p)!r}: {key!r} has shape {arr.shape}; its first axis should hold the "
                f"{len(planes)} planes of 'plane_index'"
            )
