"""Open feature files written by napari-featup (Export button, File > Save, CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import PCAProjection
from .errors import FeatureFileError
from .io import FORMATS, META_KEY, load_arrays, read_metadata
from .session.layer_data import result_layer_data


def _metadata_only(path: Path) -> dict | None:
    """The file's metadata without reading its arrays, or None if it is not readable."""
    try:
        return read_metadata(path)
    except Exception:  # noqa: BLE001 - not readable as ours: let other readers try
        return None


def _ours(meta: dict | None) -> bool:
    return isinstance(meta, dict) and (
        "napari_featup_version" in meta or "layers" in meta and "arrays" in meta
    )


def get_reader(path: Any) -> Callable[[Any], list] | None:
    """npe2 reader: a function for napari-featup feature files, None for others."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(str(path))
    if p.suffix.lower() not in FORMATS or not p.exists():
        return None
    return read_features if _ours(_metadata_only(p)) else None


def read_features(path: Any) -> list[tuple[np.ndarray, dict, str]]:
    """Layers of a feature file: PCA colours (low-res and full-res, aligned with the
    source layer's scale/translate when recorded), the similarity map when stored,
    or the layers a File > Save wrote. Nothing is recomputed."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(str(path))
    arrays, meta = load_arrays(p)
    if isinstance(meta.get("layers"), dict):
        return _saved_layers(arrays, meta["layers"])
    pca = PCAProjection.from_dict(meta["pca"]) if isinstance(meta.get("pca"), dict) else None
    name = str(meta.get("source_layer") or p.stem)
    extra = {k: arrays[k] for k in ("pca", "similarity") if k in arrays}
    lowres = arrays.get("lowres")
    if lowres is None and arrays.get("highres") is None:
        raise FeatureFileError(f"{p} holds no features (arrays: {sorted(arrays)})")
    return result_layer_data(lowres, meta, pca, name, highres=arrays.get("highres"), extra=extra)


def _saved_layers(arrays: dict, layers: dict) -> list[tuple[np.ndarray, dict, str]]:
    out = []
    for key, info in layers.items():
        if key not in arrays:
            continue
        kwargs: dict[str, Any] = {"name": info.get("name") or key}
        for k in ("scale", "translate"):
            if info.get(k):
                kwargs[k] = info[k]
        ltype = info.get("layer_type", "image")
        if ltype == "image":
            kwargs["rgb"] = bool(info.get("rgb"))
            if info.get("colormap"):
                kwargs["colormap"] = info["colormap"]
        kwargs["metadata"] = {META_KEY: dict(info.get(META_KEY) or {}, layer="from-file")}
        data = arrays[key]
        if ltype == "labels" and not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.int32)
        out.append((data, kwargs, ltype))
    return out
