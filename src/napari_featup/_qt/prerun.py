"""What the dock does before a Run: the warm-up and the estimate line.

The warm-up (:class:`~.runner.WarmUp`, in a thread) starts when the dock opens and
when the backbone, weights or device change, so the first Run is as quick as later
ones; the estimate (:func:`~napari_featup.session.estimate.estimate_text`) follows
the settings and the chosen image, and turns orange past a minute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QLabel, QSizePolicy

from ..errors import SettingsError
from ..session.estimate import estimate_text
from .runner import WarmUp


def wrapped_label(text: str = "") -> QLabel:
    """A word-wrapped label that keeps the height its text needs."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
    return label


class PreRun(QObject):
    """The warm-up and the estimate ``label``; ``warmed_up(result)`` after a warm-up."""

    warmed_up = Signal(dict)

    def __init__(
        self,
        settings_panel: Any,
        image_layer: Callable[[], Any],
        world_point: Callable[[], Any],
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self._settings = settings_panel
        self._image_layer = image_layer
        self._world_point = world_point
        self.warm_up = WarmUp(self)
        self.warm_up.finished.connect(self._on_warmed_up)
        self.label = wrapped_label()
        self.label.setToolTip(
            "Expected time and memory for the chosen settings on this machine (within "
            "about a factor of two), timed against a backbone pass when the widget opened"
        )

    def request_warm_up(self) -> None:
        """Do the first run's one-time work for the current settings in a thread."""
        try:
            extract = self._settings.run_settings().extract_kwargs()
        except SettingsError:
            return  # a typo in a field: warm up once it is fixed
        self.warm_up.request(extract)

    def _on_warmed_up(self, result: dict | None) -> None:
        with contextlib.suppress(RuntimeError):  # the dock's widgets were deleted
            self.update_estimate()  # now timed on this machine
            self.warmed_up.emit(result or {})

    def update_estimate(self) -> None:
        """Refresh the estimate line for the settings and image shown."""
        layer = self._image_layer()
        text, long = "", False
        if layer is not None:
            try:
                settings = self._settings.run_settings()
                text, long = estimate_text(settings, layer, self._world_point())
            except Exception:  # noqa: BLE001 - the estimate must never break the widget
                text = ""
        self.label.setText(f"Estimate: {text}" if text else "")
        self.label.setStyleSheet("color: #ffaa33" if long else "")
        self.label.setVisible(bool(text))
