"""Where an image layer's planes are, and putting FeatureStack arrays into the viewer."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layers import Index, PlaneGeometry


def image_geometry(layer: Any, channel_axis: int | None = None) -> PlaneGeometry:
    """Stack axes, plane size and (channel-free) scale/translate of an Image layer.

    ``channel_axis`` is an axis of ``layer.data`` holding channels; it must be one
    of the stack axes (not one of the last two, or the colour axis of RGB).
    """
    shape = tuple(int(v) for v in layer.data.shape)
    if getattr(layer, "multiscale", False):
        shape = tuple(int(v) for v in layer.data[0].shape)
    if layer.rgb:
        shape = shape[:-1]
    if len(shape) < 2:
        raise ValueError(f"layer {layer.name!r} has shape {shape}: it needs two spatial axes")
    scale = [float(v) for v in layer.scale]
    translate = [float(v) for v in layer.translate]
    leading = list(shape[:-2])
    if channel_axis is not None:
        if not 0 <= channel_axis < len(leading):
            raise ValueError(
                f"channel axis {channel_axis} is not a stack axis of layer {layer.name!r} "
                f"(shape {shape})"
            )
        del leading[channel_axis], scale[channel_axis], translate[channel_axis]
    return PlaneGeometry(tuple(leading), (shape[-2], shape[-1]), scale, translate)


def current_plane(
    viewer: Any, layer: Any, geometry: PlaneGeometry, channel_axis: int | None = None
) -> Index:
    """The plane of ``layer`` the viewer's sliders show (rounded and clipped)."""
    if not geometry.leading:
        return ()
    pos = list(layer.world_to_data(viewer.dims.point))
    if channel_axis is not None:
        del pos[channel_axis]
    lead = pos[: len(geometry.leading)]
    return tuple(int(min(max(round(float(v)), 0), n - 1)) for v, n in zip(lead, geometry.leading))


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
