"""Export computed features (the widget's Export button; no Qt).

:func:`export_stack` writes every computed plane of a stack into one file (a 2-D image
as before: arrays without a plane axis); :func:`export_stack_plane` writes one plane.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import META_KEY, save_arrays
from .geometry import Index
from .layer_data import to_uint8_rgb
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
    arrays = _plane_arrays(stack, plane, include_highres, path.suffix.lower() == ".npy")
    meta = _metadata(stack, include_highres)
    meta["plane"] = list(plane)
    return save_arrays(path, arrays, meta, overwrite=overwrite)


def export_stack(
    path: str | Path,
    stack: FeatureStack,
    include_highres: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write every computed plane of ``stack`` into one file.

    A 2-D image is written as :func:`export_stack_plane` writes it. For a stack, each
    array of that function gets a leading plane axis (``lowres`` (N, C, h, w), ``pca``
    (N, H, W, 3), ...) over the N computed planes in order; ``metadata["plane_index"]``
    gives each entry's index in the stack and ``metadata["stack_shape"]`` the stack's
    shape, so the reader puts every slice back in place.
    """
    path = Path(path)
    stored = getattr(stack, "stored", None)  # a large image's features (session.large)
    if stored is not None:
        raise ValueError(
            f"the features of this large image are in a temporary feature store "
            f"({stored.path.parent}), too large to export as one file; to keep them, "
            "run `napari-featup extract IMAGE --store OUT.zarr` (the same settings, "
            "resumable) or copy that folder before closing napari"
        )
    planes = sorted(stack.results)
    if not planes:
        raise ValueError("nothing to export: no plane has features")
    if not stack.geometry.leading:
        return export_stack_plane(path, stack, (), include_highres, overwrite)
    npy = path.suffix.lower() == ".npy"
    per_plane = [_plane_arrays(stack, p, include_highres, npy) for p in planes]
    arrays = {k: np.stack([a[k] for a in per_plane]) for k in per_plane[0]}
    meta = _metadata(stack, include_highres)
    meta["plane_index"] = [list(p) for p in planes]
    meta["stack_shape"] = list(stack.geometry.leading)
    return save_arrays(path, arrays, meta, overwrite=overwrite)


def _plane_arrays(stack: FeatureStack, plane: Index, include_highres: bool, npy: bool) -> dict:
    res = stack.results[plane]
    highres = None
    if include_highres:
        f = res.field
        highres = np.empty((f.channels,) + f.size, np.float16)
        for rows in f.iter_tiles():
            highres[:, rows] = f.highres_rows(rows).cpu().numpy()
    if npy:  # one array: the features (full-res if asked, else low-res)
        return {"highres": highres} if highres is not None else {"lowres": res.lowres}
    arrays = {"lowres": res.lowres, "highres": highres}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    arrays["pca_lowres"] = to_uint8_rgb(stack.pca.to_rgb(res.lowres))  # the whole grid
    arrays["pca"] = np.asarray(stack.pca_full[plane])
    if stack.query is not None:
        arrays["similarity"] = np.asarray(stack.update_similarity(plane))
    return arrays


def _metadata(stack: FeatureStack, include_highres: bool) -> dict:
    meta = stack.layer_metadata("export")[META_KEY]
    meta["highres_dtype"] = "float16" if include_highres else None
    if stack.pca is not None:
        meta["pca"] = stack.pca.to_dict()
    if stack.query is not None:
        meta["similarity_error_bound"] = max(stack.similarity_bound.values(), default=0.0)
    return meta
