"""Small helpers that put layer data into a napari viewer (GUI thread only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image

from ..io import META_KEY
from ..session.stack import FeatureStack

#: () -> (the current image's stack or None, the current image layer or None)
StackGetter = Callable[[], tuple[FeatureStack | None, Any]]


def is_alive(viewer: Any, layer: Any) -> bool:
    """Whether ``layer`` (or a proxy of it) is still in the viewer.

    (Plugins get proxies of layers, so identity is not stable; ``unique_id`` is.)
    """
    return any(lyr.unique_id == layer.unique_id for lyr in viewer.layers)


def input_image_layers(viewer: Any) -> list[Image]:
    """Image layers FeatUp can compute features of (not the layers it made)."""
    return [lyr for lyr in viewer.layers if isinstance(lyr, Image) and META_KEY not in lyr.metadata]


def layer_by_uid(viewer: Any, uid: Any) -> Any:
    """The viewer's layer with ``unique_id`` ``uid``, or None."""
    if uid is None:
        return None
    return next((lyr for lyr in viewer.layers if lyr.unique_id == uid), None)


def upsert_layer(viewer: Any, data: np.ndarray, kwargs: dict, layer_type: str) -> Any:
    """Add a layer, or update the data, placement and metadata of the same-named one."""
    name = kwargs["name"]
    if name in viewer.layers and bool(getattr(viewer.layers[name], "multiscale", False)) != bool(
        kwargs.get("multiscale", False)
    ):  # napari cannot switch a layer between one level and a pyramid: replace it
        viewer.layers.remove(name)
    if name in viewer.layers and viewer.layers[name].__class__.__name__.lower() == layer_type:
        layer = viewer.layers[name]
        same_shape = getattr(layer.data, "shape", None) == getattr(data, "shape", None)
        if same_shape and layer.data is data:
            layer.refresh()
        else:
            layer.data = data
        layer.scale = kwargs.get("scale", layer.scale)
        layer.translate = kwargs.get("translate", layer.translate)
        layer.metadata = kwargs.get("metadata", layer.metadata)
        if "contrast_limits" in kwargs and hasattr(layer, "contrast_limits"):
            layer.contrast_limits = kwargs["contrast_limits"]
        return layer
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def _uid_set(layers: list[Any]) -> set:
    return {lyr.unique_id for lyr in layers}


def apply_order(viewer: Any, order: list[Any]) -> None:
    """Reorder ``viewer.layers`` to ``order`` (every layer once, bottom first)."""
    layers = viewer.layers
    for i, lyr in enumerate(order):
        cur = next(j for j, other in enumerate(layers) if other.unique_id == lyr.unique_id)
        if cur != i:  # earlier positions hold earlier items already, so cur > i
            layers.move(cur, i)


def arrange_results(viewer: Any, image: Any, stack: FeatureStack, query: Any = None) -> None:
    """Put ``stack``'s layers right above ``image`` (PCA low-res, PCA full-res,
    similarity, mask, bottom to top) and the query points above everything."""
    if not is_alive(viewer, image):
        return
    names = stack.layer_names()
    ours = [viewer.layers[n] for n in names if n in viewer.layers]
    top = [query] if query is not None and is_alive(viewer, query) else []
    skip = _uid_set(ours + top)
    rest = [lyr for lyr in viewer.layers if lyr.unique_id not in skip]
    at = next(i for i, lyr in enumerate(rest) if lyr.unique_id == image.unique_id)
    apply_order(viewer, rest[: at + 1] + ours + rest[at + 1 :] + top)


def remove_replaced(viewer: Any, old: FeatureStack | None, new: FeatureStack) -> None:
    """Remove the PCA layers of an image's previous run that ``new`` does not update
    (a run with another upsampler names its full-res layer differently), so results
    do not pile up. A layer the user renamed is kept."""
    if old is None or old is new:
        return
    keep = set(new.layer_names())
    for name in old.layer_names()[:2]:
        if name in keep or name not in viewer.layers:
            continue
        meta = viewer.layers[name].metadata.get(META_KEY, {})
        if meta.get("source_layer") == old.image_name:
            viewer.layers.remove(name)


def set_results_shown(viewer: Any, stack: FeatureStack, shown: bool, hidden: set) -> None:
    """Hide ``stack``'s PCA and similarity layers while the displayed slice has no
    features (they would cover the image with black), show them again once it has;
    ``hidden`` remembers the layers hidden here, so a layer the user hid stays hidden."""
    for name in stack.layer_names()[:3]:
        if name not in viewer.layers:
            continue
        lyr = viewer.layers[name]
        if not shown and lyr.visible:
            lyr.visible = False
            hidden.add(lyr.unique_id)
        elif shown and lyr.unique_id in hidden:
            lyr.visible = True
            hidden.discard(lyr.unique_id)
