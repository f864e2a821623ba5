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
    if name in viewer.layers and viewer.layers[name].__class__.__name__.lower() == layer_type:
        layer = viewer.layers[name]
        same_shape = getattr(layer.data, "shape", None) == data.shape
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
