"""The Similarity section: query points, the similarity heatmap and the threshold mask.

The panel keeps the "FeatUp query" points layer and refreshes "<image> similarity"
from the :class:`~napari_featup.session.stack.FeatureStack` of the dock's current
image; the stack does the computing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..session.geometry import current_plane
from ..session.messages import explain
from ..session.stack import FeatureStack
from . import query_layer as _query
from .viewer_layers import (
    StackGetter,
    arrange_results,
    input_image_layers,
    is_alive,
    upsert_layer,
)


class SimilarityPanel(QWidget):
    """Query points -> similarity heatmap; ``similarity_updated`` after the heatmap
    layer changed. ``notify_error(message)`` reports failures."""

    similarity_updated = Signal()

    def __init__(
        self,
        viewer: Any,
        current: StackGetter,
        notify_error: Callable[[str], None],
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.viewer = viewer
        self._current = current
        self._notify_error = notify_error
        self.query_layer: Any = None

        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        hint = QLabel(
            "Ctrl-click the image for a positive point, Ctrl+Shift-click for a negative "
            "one, or add points to the “FeatUp query” layer. Points average; negatives "
            "subtract."
        )
        hint.setWordWrap(True)
        box.addWidget(hint)
        signs = QHBoxLayout()
        signs.addWidget(QLabel("New points:"))
        self.sign_group = QButtonGroup(self)
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        for b in (self.positive_radio, self.negative_radio):
            self.sign_group.addButton(b)
            signs.addWidget(b)
        box.addLayout(signs)
        buttons = QHBoxLayout()
        self.query_button = QPushButton("Add points")
        self.query_button.setToolTip("Select the query layer in add mode")
        self.flip_button = QPushButton("Flip selected")
        self.clear_button = QPushButton("Clear")
        for b in (self.query_button, self.flip_button, self.clear_button):
            buttons.addWidget(b)
        box.addLayout(buttons)
        trow = QHBoxLayout()
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-1.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.mask_button = QPushButton("Threshold → Labels")
        trow.addWidget(QLabel("Threshold"))
        trow.addWidget(self.threshold_spin)
        trow.addWidget(self.mask_button)
        box.addLayout(trow)

        self.query_button.clicked.connect(self.activate_query_layer)
        self.flip_button.clicked.connect(self._flip_selected)
        self.clear_button.clicked.connect(self.clear_points)
        self.mask_button.clicked.connect(lambda: self.make_mask())
        self.sign_group.buttonClicked.connect(self._sign_changed)

    # ---------------------------------------------------------- query layer
    def next_sign(self) -> str:
        """The sign new points get: "positive" or "negative"."""
        return "negative" if self.negative_radio.isChecked() else "positive"

    def forget_removed(self) -> None:
        """Drop the query layer if it was deleted from the viewer."""
        if self.query_layer is not None and not is_alive(self.viewer, self.query_layer):
            self.query_layer = None

    def drop_orphaned(self) -> None:
        """Remove the query layer once no image is left for its points to query (napari
        0.9 under Mesa also crashes adding an image after the last one went while a
        points layer stays)."""
        query = self.query_layer
        if (
            query is not None
            and is_alive(self.viewer, query)
            and not input_image_layers(self.viewer)
        ):
            self.viewer.layers.remove(query)
            self.query_layer = None

    def ensure_query_layer(self) -> Any:
        """The "FeatUp query" points layer (created over the image when missing)."""
        _, layer = self._current()
        if self.query_layer is None or not is_alive(self.viewer, self.query_layer):
            if layer is None:
                return None
            selected = list(self.viewer.layers.selection)
            self.query_layer = _query.make_query_layer(self.viewer, layer)
            _query.set_next_sign(self.query_layer, self.next_sign())
            self.query_layer.events.data.connect(self._on_points_changed)
            self.viewer.layers.selection = set(selected)  # keep the user's selection
        return self.query_layer

    def activate_query_layer(self) -> None:
        """Select the query layer in add mode (Add points)."""
        q = self.ensure_query_layer()
        if q is None:
            show_info("Run FeatUp on an image first, then add query points.")
            return
        self.viewer.layers.selection.active = q
        q.mode = "add"

    def query_layer_for_click(self) -> Any:
        """The layer a Ctrl-click adds to, or None before the image has features."""
        if self._current()[0] is None:
            return None
        return self.ensure_query_layer()

    def has_points(self) -> bool:
        """Whether the query layer holds points."""
        return self.query_layer is not None and len(self.query_layer.data) > 0

    def _flip_selected(self) -> None:
        if self.query_layer is not None:
            _query.flip_selected(self.query_layer)

    def clear_points(self) -> None:
        """Remove every query point."""
        if self.has_points():
            self.query_layer.data = np.empty((0, self.query_layer.ndim))

    def _sign_changed(self, *_: Any) -> None:
        if self.query_layer is not None:
            _query.set_next_sign(self.query_layer, self.next_sign())

    def _on_points_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # adding / removing / changing: wait for the end
            return
        if self.query_layer is not None:
            _query.recolour(self.query_layer)
        self.update_similarity()

    # ------------------------------------------------------------ heatmap
    def update_similarity(self) -> bool:
        """Recompute the query from the points and refresh "<image> similarity" (the
        displayed plane now, other planes when the slider reaches them)."""
        stack, layer = self._current()
        if stack is None or self.query_layer is None:
            return False
        try:
            pos, neg = _query.split_points(self.query_layer, layer)
            ca = stack.config.get("channel_axis")
            if ca is not None:  # points have the channel axis, stack planes do not
                pos = [p[:ca] + p[ca + 1 :] for p in pos]
                neg = [p[:ca] + p[ca + 1 :] for p in neg]
            ignored = stack.set_query(pos, neg)
            if ignored:
                show_info(
                    f"{len(ignored)} query point(s) lie outside the image or on slices "
                    "without features and were ignored."
                )
            plane = current_plane(layer, stack.geometry, self.viewer.dims.point, ca)
            stack.update_similarity(plane)
            data, kwargs, ltype = stack.similarity_layer_data(plane)
            new = kwargs["name"] not in self.viewer.layers
            upsert_layer(self.viewer, data, kwargs, ltype)
            if new:  # heatmap above the PCA layers, query points above everything
                arrange_results(self.viewer, layer, stack, self.query_layer)
        except Exception as exc:  # noqa: BLE001 - never let a click crash the viewer
            self._notify_error(explain(exc, "computing the similarity"))
            return False
        self.similarity_updated.emit()
        return True

    def refresh_plane(self, stack: FeatureStack, plane: tuple[int, ...]) -> None:
        """Bring plane ``plane``'s similarity up to the query (the slider reached it)."""
        if plane in stack.stale_similarity and stack.query is not None:
            stack.update_similarity(plane)
            if stack.similarity_name in self.viewer.layers:
                self.viewer.layers[stack.similarity_name].refresh()

    def make_mask(self, threshold: float | None = None) -> Any:
        """Labels layer "<image> similarity mask": similarity >= threshold."""
        stack, _ = self._current()
        if stack is None or stack.query is None:
            show_info("Add a query point first (Ctrl-click the image after a run).")
            return None
        t = float(self.threshold_spin.value() if threshold is None else threshold)
        mask = upsert_layer(self.viewer, *stack.mask_layer_data(t))
        arrange_results(self.viewer, self._current()[1], stack, self.query_layer)
        return mask
