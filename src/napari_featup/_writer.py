"""napari's File > Save for FeatUp layers: data and metadata in one feature file."""

from __future__ import annotations

import re
from typing import Any

from . import __version__
from ._reader_associations import associate_feature_files
from .io import META_KEY, save_arrays


def _array_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "layer"
    if base == "metadata":
        base = "layer_metadata"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def write_layers(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write layers (PCA, similarity, masks or any image/labels layer) to ``path``
    (.featup.npz, .featup.tif, .featup.npy or .featup.zarr by extension), with each
    layer's name, type, scale, translate and FeatUp metadata. An existing file is
    replaced, as napari's own writers do (its Save dialog asks first); the new file is
    written next to it and moved into place, so a failed write leaves the old one
    intact."""
    arrays: dict[str, Any] = {}
    layers: dict[str, dict] = {}
    taken: set[str] = set()
    for data, attrs, ltype in layer_data:
        key = _array_name(str(attrs.get("name", ltype)), taken)
        arrays[key] = data
        meta = attrs.get("metadata") or {}
        layers[key] = {
            "name": attrs.get("name"),
            "layer_type": ltype,
            "rgb": bool(attrs.get("rgb", False)),
            "scale": [float(v) for v in attrs.get("scale", ())],
            "translate": [float(v) for v in attrs.get("translate", ())],
            "colormap": _colormap_name(attrs.get("colormap")),
            META_KEY: meta.get(META_KEY, {}),
        }
    meta = {"napari_featup_version": __version__, "layers": layers}
    associate_feature_files()  # so napari opens the saved file with FeatUp again
    return [str(save_arrays(path, arrays, meta, overwrite=True))]


def _colormap_name(cmap: Any) -> str | None:
    if cmap is None:
        return None
    if isinstance(cmap, str):
        return cmap
    return getattr(cmap, "name", None)
