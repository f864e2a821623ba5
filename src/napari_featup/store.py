"""A zarr store of features for many images, one group per image, safe to resume.

Layout (zarr v3; any zarr/dask reader opens it)::

    features.zarr/                 attrs["napari_featup"] = {"format": ..., "version": 1}
      <image>/                     attrs["napari_featup"] = metadata, "pca", "signature"
        features    (C, h, w)      float16 by default: the grid at the working scale
        pca_lowres  (h, w, 3)      uint8 PCA colours of the grid
        pca         (H, W, 3)      uint8 full-resolution PCA colours (when asked for)

Each image is written under a temporary name beside the store and renamed into it when
complete, so a killed run leaves only whole images, and the next run skips them.
Every chunk is stored (even an all-zero one), so a chunk file lost later raises
:class:`~napari_featup.errors.FeatureFileError` naming it instead of reading as zeros,
and the next run recomputes that image.
A *signature* (as micro-sam keeps with its embeddings) records what an image's features
depend on: the input data (a BLAKE2 digest of its pixels, plus path, size and mtime for
a cheap first check), the model, scale, tiling, preprocessing and package version. An
image whose signature differs is stale and is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import FeatureFileError
from .io import META_KEY, clean_stale_temporaries
from .io.write import _temp_name
from .io.zarr_chunks import check_chunks, is_marked
from .source import ImageSource

STORE_FORMAT = "napari-featup feature store"
STORE_VERSION = 1


def _canonical(obj: Any) -> str:
    """JSON with sorted keys: equal settings give equal text, hence equal digests."""
    return json.dumps(obj, sort_keys=True, default=str)


def _digest(obj: Any) -> str:
    return hashlib.blake2b(_canonical(obj).encode(), digest_size=16).hexdigest()


def data_digest(source: ImageSource, band_bytes: int = 64 << 20) -> str:
    """BLAKE2 digest of a plane's pixels (shape and dtype included), read in bands."""
    h, w = source.shape
    d = hashlib.blake2b(digest_size=16)
    d.update(f"{h}x{w}:{source.dtype.str}:{source.layout}".encode())
    first = source.read(slice(0, 1), slice(0, w))
    rows = max(1, band_bytes // max(1, first.nbytes))
    for r in range(0, h, rows):
        d.update(np.ascontiguousarray(source.read(slice(r, min(h, r + rows)), slice(0, w))).data)
    return d.hexdigest()


def file_stamp(path: str | os.PathLike | None) -> dict | None:
    """Path, size and modification time of an input file (a folder for zarr: its newest
    entry), for the cheap staleness check; None for in-memory inputs."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        stats = [q.stat() for q in p.rglob("*") if q.is_file()]
        size = sum(s.st_size for s in stats)
        mtime = max((s.st_mtime_ns for s in stats), default=0)
    else:
        st = p.stat()
        size, mtime = st.st_size, st.st_mtime_ns
    return {"path": str(p.resolve()), "size": int(size), "mtime_ns": int(mtime)}


def make_signature(settings: dict, data: str, stamp: dict | None, plane: tuple) -> dict:
    """The signature of one image's features: what they were computed from."""
    settings = dict(settings, napari_featup_version=__version__)
    return {
        "settings": settings,
        "settings_digest": _digest(settings),
        "data_digest": data,
        "file": stamp,
        "plane": json.loads(_canonical(list(plane))),  # as stored: tuples become lists
    }


class FeatureStore:
    """A feature store on disk: one zarr group per image (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The store's folder (``*.zarr``).
    mode : {"r", "a"}
        ``"r"`` reads an existing store; ``"a"`` creates it when missing.

    Raises
    ------
    FeatureFileError
        ``mode="r"`` and no store at ``path``, or a store this version cannot read.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        import zarr

        self.path = Path(path)
        if mode == "r" and not self.path.is_dir():
            raise FeatureFileError(f"feature store {str(self.path)!r} does not exist")
        if mode == "a" and not (self.path / "zarr.json").exists():
            self._create()
        root = zarr.open_group(str(self.path), mode="r")
        info = dict(root.attrs.get(META_KEY, {}))
        if info.get("format") != STORE_FORMAT:
            raise FeatureFileError(f"{str(self.path)!r} is not a napari-featup feature store")
        self.mode = mode

    def _create(self) -> None:
        """Make the empty store under a temporary name and rename it into place, so a
        run killed while creating it leaves no half store (zarr's own temporary of
        ``zarr.json``) that the next run would take for a foreign folder."""
        import zarr

        if self.path.is_dir() and any(self.path.iterdir()):
            raise FeatureFileError(
                f"{str(self.path)!r} is a folder that is not a feature store; "
                "choose a new name for the store"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(self.path, "tmp")  # removed by clean_partial if we are killed
        try:
            info = {META_KEY: {"format": STORE_FORMAT, "version": STORE_VERSION}}
            zarr.open_group(str(tmp), mode="w", attributes=info)
            try:
                os.replace(tmp, self.path)  # onto nothing, or onto an empty folder
            except OSError:
                if not (self.path / "zarr.json").exists():
                    raise  # not another process's store made meanwhile: a real failure
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- reading -----------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the complete images, sorted."""
        if not self.path.is_dir():
            return []
        return sorted(
            p.name
            for p in self.path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").exists()
        )

    def __contains__(self, name: str) -> bool:
        return (self.path / name / "zarr.json").exists()

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> StoredImage:
        if name not in self:
            raise KeyError(f"no image {name!r} in {str(self.path)!r}")
        return StoredImage(self.path / name)

    def signature(self, name: str) -> dict | None:
        """The stored signature of ``name`` (None when absent)."""
        if name not in self:
            return None
        return self[name].metadata.get("signature")

    def is_current(self, name: str, signature: dict, source: ImageSource | None = None) -> bool:
        """Whether ``name`` holds features with this signature: settings equal, and the
        data equal (the file stamp when it matches, else the digest of ``source``)."""
        old = self.signature(name)
        if not old or old.get("settings_digest") != signature["settings_digest"]:
            return False
        if old.get("plane", []) != signature["plane"]:
            return False
        stamp = signature.get("file")
        if stamp is not None and old.get("file") == stamp:
            return self[name].intact()
        data = signature.get("data_digest")
        if data is None and source is not None:
            data = data_digest(source)
        return data is not None and data == old.get("data_digest") and self[name].intact()

    # -- writing -----------------------------------------------------------------------

    @property
    def partial_dir(self) -> Path:
        """Where images are written before they are complete (beside the store, so the
        rename into it is atomic on the same file system)."""
        return self.path.with_name(f".{self.path.name}.partial")

    def clean_partial(self) -> None:
        """Remove what killed runs left half-written."""
        if self.partial_dir.is_dir():
            shutil.rmtree(self.partial_dir, ignore_errors=True)
        clean_stale_temporaries(self.path)  # of a killed creation of the store

    def drop_empty_partial(self) -> None:
        """Remove the folder of partial images when nothing is being written there."""
        with contextlib.suppress(OSError):
            self.partial_dir.rmdir()

    @contextlib.contextmanager
    def writing(self, name: str):
        """Context manager giving a fresh zarr group for ``name``; on success it replaces
        any old ``name`` in one rename, on failure nothing changes."""
        import zarr

        if not name or "/" in name or name.startswith("."):
            raise FeatureFileError(f"{name!r} cannot name an image in a feature store")
        self.partial_dir.mkdir(exist_ok=True)
        tmp = self.partial_dir / f"{name}.{uuid.uuid4().hex[:8]}"
        try:
            yield zarr.open_group(str(tmp), mode="w")
            final = self.path / name
            if final.exists():
                old = self.partial_dir / f"{name}.{uuid.uuid4().hex[:8]}.old"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, {len(self)} images)"


class StoredImage:
    """One image's group: ``features`` (zarr array), ``pca``/``pca_lowres`` (or None),
    ``metadata`` (dict) and the fitted ``projection``."""

    def __init__(self, path: Path):
        import zarr

        self.path = path
        self.group = zarr.open_group(str(path), mode="r")
        self.metadata = dict(self.group.attrs.get(META_KEY, {}))
        self._checked: set[str] = set()

    def _array(self, name: str):
        if name not in self.group.array_keys():
            return None
        arr = self.group[name]
        if name not in self._checked and is_marked(self.group):
            # a chunk file lost after the write would read as zeros: refuse instead
            check_chunks(arr, f"feature store {str(self.path.parent)!r}, image {self.path.name!r}")
            self._checked.add(name)
        return arr

    def intact(self) -> bool:
        """Whether every chunk of every array is stored (always True for images
        written before chunks were all stored: those cannot be checked)."""
        try:
            for name in self.group.array_keys():
                self._array(name)
        except FeatureFileError:
            return False
        return True

    @property
    def features(self):
        """The stored features at the working scale (a lazy zarr array).

        Raises
        ------
        FeatureFileError
            A chunk of it is missing from the store (damage; it would read as zeros).
        """
        arr = self._array("features")
        if arr is None:
            raise FeatureFileError(f"{str(self.path)!r} holds no 'features' array")
        return arr

    @property
    def pca(self):
        """The stored PCA colours (uint8, a lazy zarr array), or None."""
        return self._array("pca")

    @property
    def pca_lowres(self):
        """The stored low-res PCA colours (uint8, a lazy zarr array), or None."""
        return self._array("pca_lowres")

    @property
    def projection(self):
        """The PCA projection the colours were made with, or None."""
        from .analysis import PCAProjection

        d = self.metadata.get("pca")
        return PCAProjection.from_dict(d) if isinstance(d, dict) else None

    def lowres(self) -> np.ndarray:
        """The feature grid as float32 numpy (C, h, w)."""
        return np.asarray(self.features[...], dtype=np.float32)

    def __repr__(self) -> str:
        return f"StoredImage({self.path.name!r}, features {tuple(self.features.shape)})"


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open an existing feature store for reading.

    Parameters
    ----------
    path : str or os.PathLike
        The store's folder, as written by :func:`~napari_featup.batch.extract_many`.

    Returns
    -------
    FeatureStore
    """
    return FeatureStore(path, mode="r")


def signature_json(sig: dict) -> str:
    """A signature as canonical JSON (for printing and comparing)."""
    return _canonical(sig)
