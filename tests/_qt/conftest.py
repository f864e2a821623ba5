"""Fixtures of the widget tests: a viewer with the FeatUp dock, napari's notifications."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import notification_manager  # noqa: E402


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    seen: list[str] = []

    def grab(n):
        seen.append(str(n.message))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.device_combo.setCurrentText("cpu")
    widget.backbone_combo.setCurrentText("dinov2")
    widget.upsampler_combo.setCurrentText("bilinear")
    return viewer, widget
