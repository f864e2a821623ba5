"""Feature files other tools read: .npz, .zarr, .tif and .npy, with metadata.

* ``.npz``: one array per name plus ``metadata`` (a JSON string); ``np.load`` reads it.
* ``.zarr``: a group with one array per name and the metadata in the group's
  attributes under ``"napari_featup"``; zarr, dask and napari read it.
* ``.tif``/``.tiff``: one series per array (channel-first), the names and metadata as
  JSON in the first page's ImageDescription; tifffile and Fiji read it.
* ``.npy``: a single array, the metadata beside it in ``<file>.json``.

Writes go to a temporary name in the same folder and are renamed into place, so a
failed or interrupted write never leaves a half file under the final name, and an
existing file is only replaced with ``overwrite=True``. A killed write cannot clean
up: its temporaries (hidden, named after the target and the writer's pid) are removed
by the next write of the same name. A ``.npy`` is two files: an old one is moved aside
before the new pair is renamed in, and its sidecar records the array's shape, dtype and
CRC-32, so a pair from two different writes is refused rather than read.

Readers check what they read: damaged, mislabelled or foreign files and metadata that
does not describe the arrays raise :class:`FeatureFileError` saying what is wrong.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Callable
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
    """Remove temporaries that killed writes of ``path`` left beside it; return them.

    A write that is killed (SIGKILL, power loss) cannot clean up after itself; its
    temporaries carry its process id, and the next write of the same name removes
    those whose process has ended. Readers never open them (they are hidden files
    with names that are not the final one)."""
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
    Raises :class:`FeatureFileError` for arrays, names or metadata the format cannot
    hold (before writing anything) and ``FileExistsError`` unless ``overwrite``."""
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
        z = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
        z[...] = arr
    group.attrs[META_KEY] = meta


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
    """The metadata written by :func:`save_arrays`, without reading the arrays
    (``{}`` for a file of a supported format that carries none)."""
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
    """Read the named arrays and metadata written by :func:`save_arrays`."""
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
    from . import __version__

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
    """Check and return ``(lowres, highres, pca)`` of a file's arrays and metadata.

    Both maps must be real (C, h, w) arrays with the same C; a stored PCA must be one
    fitted on C channels. Anything else is a :class:`FeatureFileError` naming it.
    """
    from .analysis import PCAProjection

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
    from .pipeline import FeatureResult

    arrays, meta = load_arrays(path)
    lowres, highres, pca = feature_arrays(path, arrays, meta)
    return FeatureResult(lowres=lowres, highres=highres, metadata=meta, pca=pca)
