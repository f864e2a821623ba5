"""Export the features shown for one plane (the widget's Export button; no Qt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import META_KEY, save_arrays
from .geometry import Index
from .stack import FeatureStack

#: files inside a zarr store that a file dialog can pick for the store itself
_ZARR_MARKERS = ("zarr.json", ".zattrs", ".zgroup", ".zarray")


def feature_file_from_choice(path: str | Path) -> Path:
    """The feature file a user meant: ``path``, or the ``.zarr`` folder holding it when
    a file dialog picked a file inside the store (dialogs pick files, not folders)."""
    path = Path(path)
    if path.name in _ZARR_MARKERS:
        for parent in path.parents:
            if parent.suffix.lower() == ".zarr":
                return parent
    return path


def export_stack_plane(
    path: str | Path,
    stack: FeatureStack,
    plane: Index,
    include_highres: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write plane ``plane`` of ``stack`` with :func:`napari_featup.io.save_arrays`.

    Arrays: ``lowres`` (C, h, w) float32 features, ``highres`` (C, H, W) float16 when
    ``include_highres`` (materialised here in row tiles), ``pca_lowres`` (h, w, 3) and
    ``pca`` (H, W, 3) uint8 colours, ``similarity`` (H, W) float32 when a query is
    set. A ``.npy`` file holds only the features (full-res if asked, else low-res).
    Metadata: how the features were made, the PCA, the plane and the source layer's
    scale/translate; :func:`napari_featup.io.load_features` reads it back.
    """
    path = Path(path)
    res = stack.results[plane]
    highres = None
    if include_highres:
        f = res.field
        highres = np.empty((f.channels,) + f.size, np.float16)
        for rows in f.iter_tiles():
            highres[:, rows] = f.highres_rows(rows).cpu().numpy()
    arrays = {"lowres": res.lowres, "highres": highres}
    if path.suffix.lower() == ".npy":
        arrays = {"highres": highres} if highres is not None else {"lowres": res.lowres}
    else:
        arrays["pca_lowres"] = stack.pca_lowres[plane]
        arrays["pca"] = stack.pca_full[plane]
        if stack.query is not None:
            arrays["similarity"] = stack.update_similarity(plane)
    meta = stack.layer_metadata("export")[META_KEY]
    meta["plane"] = list(plane)
    meta["highres_dtype"] = "float16" if highres is not None else None
    if stack.pca is not None:
        meta["pca"] = stack.pca.to_dict()
    return save_arrays(path, arrays, meta, overwrite=overwrite)
