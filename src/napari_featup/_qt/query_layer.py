"""The "FeatUp query" points layer: positive and negative similarity query points.

Points carry a ``sign`` feature ("positive" or "negative"), shown as green and
magenta. New points take the sign chosen in the widget; Ctrl-click on the canvas adds
a positive point, Ctrl+Shift-click a negative one (in any layer mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ..io import META_KEY

QUERY_NAME = "FeatUp query"
SIGNS = ("positive", "negative")
COLOURS = {"positive": "#33dd55", "negative": "#ff33cc"}


def make_query_layer(viewer: Any, image_layer: Any) -> Any:
    """Add an empty query layer placed like ``image_layer`` (same scale/translate)."""
    features = pd.DataFrame({"sign": pd.Categorical([], categories=list(SIGNS))})
    ndim = image_layer.ndim
    size = 0.02 * max(
        float(s) * n
        for s, n in zip(
            image_layer.scale[-2:],
            image_layer.data.shape[-3:-1] if image_layer.rgb else image_layer.data.shape[-2:],
        )
    )
    layer = viewer.add_points(
        np.empty((0, ndim)),
        ndim=ndim,
        name=QUERY_NAME,
        features=features,
        face_color="sign",
        face_color_cycle=[COLOURS[s] for s in SIGNS],
        border_color="white",
        border_width=0.1,
        size=max(size, 1.0),
        scale=image_layer.scale,
        translate=image_layer.translate,
        metadata={META_KEY: {"layer": "query", "source_layer": image_layer.name}},
    )
    return layer


def set_next_sign(layer: Any, sign: str) -> None:
    """Sign that points added next (by any means) get."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")
    # (not current_face_color: setting it recolours the selected points too)
    layer.feature_defaults["sign"] = sign


def point_signs(layer: Any) -> list[str]:
    """Sign of each point ("positive" where the feature is missing or unknown)."""
    if "sign" not in layer.features or len(layer.features) != len(layer.data):
        return ["positive"] * len(layer.data)
    return [str(s) if str(s) in SIGNS else "positive" for s in layer.features["sign"]]


def recolour(layer: Any) -> None:
    """Face colours from the ``sign`` feature (after edits that bypass the cycle)."""
    if len(layer.data):
        layer.face_color = [COLOURS[s] for s in point_signs(layer)]


def flip_selected(layer: Any) -> int:
    """Swap positive <-> negative for the selected points; return how many."""
    sel = sorted(layer.selected_data)
    if not sel:
        return 0
    feats = layer.features.copy()
    signs = point_signs(layer)
    for i in sel:
        signs[i] = "negative" if signs[i] == "positive" else "positive"
    feats["sign"] = pd.Categorical(signs, categories=list(SIGNS))
    layer.features = feats
    recolour(layer)
    layer.events.data(
        value=layer.data, action="changed", data_indices=tuple(sel), vertex_indices=((),)
    )
    return len(sel)


def add_point(layer: Any, world_position: Any, sign: str) -> None:
    """Add a point at a world position with ``sign``, keeping the layer's next sign."""
    previous = (
        str(layer.feature_defaults["sign"].iloc[0]) if len(layer.feature_defaults) else "positive"
    )
    set_next_sign(layer, sign)
    try:
        layer.add([layer.world_to_data(world_position)])
    finally:
        set_next_sign(layer, previous if previous in SIGNS else "positive")
        recolour(layer)


def split_points(layer: Any, image_layer: Any) -> tuple[list, list]:
    """(positive, negative) points in ``image_layer``'s data coordinates."""
    pos, neg = [], []
    for p, sign in zip(layer.data, point_signs(layer)):
        d = list(image_layer.world_to_data(layer.data_to_world(p)))
        (neg if sign == "negative" else pos).append(d)
    return pos, neg


def ctrl_click_callback(get_layer: Callable[[], Any]) -> Callable:
    """A viewer mouse-drag callback adding query points on Ctrl(+Shift)-click."""

    def callback(viewer: Any, event: Any) -> None:
        mods = {str(getattr(m, "name", m)) for m in (event.modifiers or ())}
        if event.type != "mouse_press" or "Control" not in mods:
            return
        layer = get_layer()
        if layer is None:
            return
        active = viewer.layers.selection.active
        if active is not None and active.unique_id == layer.unique_id and layer.mode == "add":
            return  # the points layer adds this click itself (with the widget's sign)
        add_point(layer, event.position, "negative" if "Shift" in mods else "positive")

    return callback
