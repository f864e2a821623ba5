"""Where the 2-D planes of an image layer are (no Qt; layers are read by duck typing).

A napari Image layer may be a stack (leading axes) of 2-D planes, possibly with an
axis holding channels. :class:`PlaneGeometry` records the stack shape, the plane size
and the layer's placement; :func:`image_geometry` reads it off a layer and
:func:`current_plane` says which plane a viewer position shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError, SettingsError

#: index of a plane in the stack axes (``()`` for a 2-D image)
Index = tuple[int, ...]


@dataclass
class PlaneGeometry:
    """Where the 2-D planes of an image layer sit.

    ``leading`` is the shape of the stack axes (``()`` for a 2-D image), ``size`` the
    plane's (H, W); ``scale``/``translate`` the image layer's, one entry per axis of
    ``leading + size``.
    """

    leading: tuple[int, ...]
    size: tuple[int, int]
    scale: list[float]
    translate: list[float]

    @property
    def ndim(self) -> int:
        """Number of axes of a plane index plus the two spatial axes."""
        return len(self.leading) + 2

    def planes(self) -> list[Index]:
        """All plane indices, in C order."""
        return (
            [tuple(int(v) for v in i) for i in np.ndindex(*self.leading)] if self.leading else [()]
        )

    def check_index(self, index: Sequence[int]) -> Index:
        """``index`` as a tuple of ints; IndexError when it is not a plane of the stack."""
        idx = tuple(int(v) for v in index)
        if len(idx) != len(self.leading) or any(not 0 <= i < n for i, n in zip(idx, self.leading)):
            raise IndexError(f"plane index {idx} is outside the stack of shape {self.leading}")
        return idx


def layer_shape(layer: Any) -> tuple[int, ...]:
    """Shape of an Image layer's data without the colour axis of RGB(A) (level 0 of
    a multiscale layer)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(v) for v in data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def image_geometry(layer: Any, channel_axis: int | None = None) -> PlaneGeometry:
    """Stack axes, plane size and (channel-free) scale/translate of an Image layer.

    ``channel_axis`` is an axis of ``layer.data`` holding channels; it must be one of
    the stack axes (not one of the last two, nor the colour axis of RGB), else
    :class:`~napari_featup.errors.SettingsError`. A layer without two spatial axes
    raises :class:`~napari_featup.errors.ImageError`.
    """
    shape = layer_shape(layer)
    if len(shape) < 2:
        raise ImageError(f"layer {layer.name!r} has shape {shape}: it needs two spatial axes")
    scale = [float(v) for v in layer.scale]
    translate = [float(v) for v in layer.translate]
    leading = list(shape[:-2])
    if channel_axis is not None:
        if not 0 <= channel_axis < len(leading):
            raise SettingsError(
                f"Channel axis {channel_axis} is not a stack axis of layer {layer.name!r} "
                f"(shape {shape}). What to do: choose one of the axes before the last two, "
                "or none."
            )
        del leading[channel_axis], scale[channel_axis], translate[channel_axis]
    return PlaneGeometry(tuple(leading), (shape[-2], shape[-1]), scale, translate)


def current_plane(
    layer: Any,
    geometry: PlaneGeometry,
    world_point: Sequence[float],
    channel_axis: int | None = None,
) -> Index:
    """The plane of ``layer`` shown at viewer position ``world_point`` (the viewer's
    ``dims.point``), rounded and clipped to the stack."""
    if not geometry.leading:
        return ()
    pos = list(layer.world_to_data(world_point))
    if channel_axis is not None:
        del pos[channel_axis]
    lead = pos[: len(geometry.leading)]
    return tuple(int(min(max(round(float(v)), 0), n - 1)) for v, n in zip(lead, geometry.leading))
