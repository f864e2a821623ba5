"""Open feature files written by napari-featup (Export button, File > Save, CLI)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._reader_associations import associate_feature_files
from .analysis import PCAProjection
from .errors import FeatureFileError
from .io import (
    FEATUP_SUFFIX,
    FORMATS,
    META_KEY,
    check_planes,
    feature_arrays,
    load_arrays,
    read_metadata,
)
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
    source layer's scale/translate when recorded), the similarity map and the text-query
    heatmaps and label map (``extract --text``) when stored, or the layers a File > Save
    wrote. Nothing is recomputed.

    A damaged file, or metadata that cannot place the layers, raises
    :class:`FeatureFileError` naming what is wrong (napari shows the message)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    associate_feature_files()  # chosen once in napari's dialog: the default from now on
    p = Path(str(path))
    arrays, meta = load_arrays(p)
    if meta.get("layers") is not None:
        if not isinstance(meta["layers"], dict):
            raise FeatureFileError(
                f"{str(p)!r}: metadata 'layers' is a {type(meta['layers']).__name__}, "
                "not a dict of layers"
            )
        return _saved_layers(p, arrays, meta["layers"])
    stacked = meta.get("plane_index") is not None  # a stack's export: a leading plane axis
    if stacked:
        check_planes(p, arrays, meta)
        plane0 = {k: v[0] for k, v in arrays.items() if k in ("lowres", "highres")}
        _, _, pca = feature_arrays(p, plane0, meta)  # each plane checked as one file's
        lowres, highres = arrays.get("lowres"), arrays.get("highres")
    else:
        lowres, highres, pca = feature_arrays(p, arrays, meta)
    if pca is not None:
        pca = _three_components(pca)
    _numbers(p, meta, "source_scale", nonzero=True)
    _numbers(p, meta, "source_translate")
    stride = meta.get("stride")
    if stride is not None and not (
        isinstance(stride, (int, float))
        and not isinstance(stride, bool)
        and float(stride).is_integer()
        and stride >= 1
    ):
        raise FeatureFileError(
            f"{str(p)!r}: metadata 'stride' is {stride!r}, not a whole number >= 1"
        )
    extra = {}
    #: stored layers and the array shapes they need (text_*: written by extract --text)
    shapes = {
        "pca": "(H, W, 3) colours",
        "similarity": "(H, W)",
        "text_similarity": "(N, H, W) heatmaps, one per prompt",
        "text_labels": "(H, W) labels",
    }
    for key, ndims in (
        ("pca", (3,)),
        ("similarity", (2,)),
        ("text_similarity", (3,)),
        ("text_labels", (2,)),
    ):
        arr = arrays.get(key)
        if arr is None:
            continue
        ndims = tuple(n + 1 for n in ndims) if stacked else ndims
        if (
            arr.ndim not in ndims
            or arr.size == 0
            or arr.dtype.kind not in "biuf"
            or (key == "pca" and arr.shape[-1] not in (3, 4))
        ):
            raise FeatureFileError(
                f"{str(p)!r}: the stored {key!r} layer is a {arr.dtype} array of shape "
                f"{arr.shape}; expected {shapes[key]}"
            )
        extra[key] = arr
    source = meta.get("source_layer")
    name = source if isinstance(source, str) and source else p.stem.removesuffix(FEATUP_SUFFIX)
    return result_layer_data(lowres, meta, pca, name, highres=highres, extra=extra)


def _three_components(pca: PCAProjection) -> PCAProjection:
    """The PCA shown as RGB: its first three components (zero components padded when a
    library user stored fewer, as :func:`fit_pca` pads for few channels)."""
    k = pca.components.shape[0]
    if k == 3:
        return pca
    if k > 3:
        return PCAProjection(
            **{name: np.asarray(v)[:3] for name, v in vars(pca).items() if name != "mean"},
            mean=pca.mean,
        )
    pad = 3 - k

    def padded(v: np.ndarray) -> np.ndarray:
        return np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])

    return PCAProjection(
        components=padded(pca.components),
        mean=pca.mean,
        low=padded(pca.low),
        high=padded(pca.high),
        explained_variance_ratio=padded(pca.explained_variance_ratio),
    )


def _numbers(p: Path, meta: dict, key: str, nonzero: bool = False) -> None:
    """Check that ``meta[key]``, when set, is a list of >= 2 finite numbers."""
    value = meta.get(key)
    if value is None or (
        isinstance(value, list) and len(value) >= 2 and _is_numbers(value, len(value), nonzero)
    ):
        return
    raise FeatureFileError(
        f"{str(p)!r}: metadata {key!r} is {value!r}; expected a list of at least two finite"
        + (" non-zero" if nonzero else "")
        + " numbers"
    )


def _is_numbers(value: Any, n: int, nonzero: bool = False) -> bool:
    """Whether ``value`` is a list of ``n`` finite (and, if asked, non-zero) numbers."""
    return (
        isinstance(value, list)
        and len(value) == n
        and all(
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and (v != 0 or not nonzero)
            for v in value
        )
    )


def _colormap(name: Any) -> str | None:
    """The stored colormap if napari knows it (a cosmetic setting: unknown ones are dropped)."""
    if not isinstance(name, str) or not name:
        return None
    try:
        from napari.utils.colormaps import ensure_colormap

        ensure_colormap(name)
    except Exception:  # noqa: BLE001 - napari says unknown in several ways
        return None
    return name


def _saved_layers(p: Path, arrays: dict, layers: dict) -> list[tuple[np.ndarray, dict, str]]:
    out = []
    for key, info in layers.items():
        if key not in arrays:
            continue
        if not isinstance(info, dict):
            raise FeatureFileError(
                f"{str(p)!r}: metadata for layer {key!r} is a {type(info).__name__}, not a dict"
            )
        ltype = info.get("layer_type", "image")
        if ltype not in ("image", "labels"):
            raise FeatureFileError(
                f"{str(p)!r}: layer {key!r} has type {ltype!r}; this reader opens image and "
                "labels layers"
            )
        data = arrays[key]
        rgb = ltype == "image" and bool(info.get("rgb"))
        ndim = data.ndim - 1 if rgb else data.ndim
        if (
            data.size == 0
            or data.dtype.kind not in "biuf"
            or ndim < 2
            or (rgb and data.shape[-1] not in (3, 4))
        ):
            raise FeatureFileError(
                f"{str(p)!r}: layer {key!r} is a {data.dtype} array of shape {data.shape}, "
                f"which is not a {'RGB ' if rgb else ''}{ltype} layer"
            )
        name = info.get("name")
        kwargs: dict[str, Any] = {"name": name if isinstance(name, str) and name else key}
        for k in ("scale", "translate"):
            value = info.get(k)
            if value in (None, []):
                continue
            if not _is_numbers(value, ndim, nonzero=k == "scale"):
                raise FeatureFileError(
                    f"{str(p)!r}: layer {key!r} has {k} {value!r}; expected {ndim} finite "
                    + ("non-zero " if k == "scale" else "")
                    + "numbers"
                )
            kwargs[k] = value
        if ltype == "image":
            kwargs["rgb"] = rgb
            cmap = _colormap(info.get("colormap"))
            if cmap:
                kwargs["colormap"] = cmap
        own = info.get(META_KEY)
        kwargs["metadata"] = {
            META_KEY: dict(own if isinstance(own, dict) else {}, layer="from-file")
        }
        if ltype == "labels" and not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.int32)
        out.append((data, kwargs, ltype))
    return out
