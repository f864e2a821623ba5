"""The settings as a new user meets them: layout in napari's default window, the
upsampler's weights, the estimate, the warm-up and messages (Xvfb, random weights)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtWidgets import QLabel, QScrollArea, QWidget  # noqa: E402

from .test_dock import run_and_wait, two_region_rgb  # noqa: E402


@pytest.fixture
def offline_jbu(monkeypatch, tmp_path):
    """No cached FeatUp checkpoint and no server to fetch one from."""
    import napari_featup.upsamplers.featup_jbu.checkpoints as jbu

    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(jbu, "_BASE_URL", "http://127.0.0.1:9/")


def test_dock_fits_the_default_window(qtbot, make_napari_viewer):
    """napari's default 1280 x 800 window: the dock takes well under half the width,
    the Run section (random-weights warning included) shows without scrolling, and no
    label is squeezed below its height."""
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    viewer.add_image(two_region_rgb(), name="photo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.upsampler_combo.setCurrentText("featup-jbu")  # the tallest Run section
    qtbot.waitUntil(lambda: widget.isVisible() and widget.height() > 100, timeout=5000)
    qtbot.wait(200)  # let the layouts settle (no signal marks the end of a relayout)
    assert window.width() <= 1280 and window.height() <= 800
    assert widget.width() < 0.4 * window.width(), widget.width()
    area = widget.findChild(QScrollArea)
    viewport = area.viewport()
    for w in (widget.random_warning, widget.run_button, widget.cancel_button):
        assert w.isVisible()
        top = w.mapTo(viewport, w.rect().topLeft()).y()
        bottom = w.mapTo(viewport, w.rect().bottomLeft()).y()
        assert top >= 0 and bottom <= viewport.height(), (w, top, bottom, viewport.height())
    assert area.widget().width() <= viewport.width()  # nothing cut at the right edge
    for child in area.widget().findChildren(QWidget):
        if child.isVisible() and child.width() > 0:
            right = child.mapTo(viewport, child.rect().topRight()).x()
            assert right <= viewport.width(), (type(child).__name__, right, viewport.width())
    for label in widget.findChildren(QLabel):
        if not label.isVisible() or not label.text():
            continue
        need = (
            label.heightForWidth(label.width()) if label.wordWrap() else label.sizeHint().height()
        )
        assert label.height() >= need - 1, (label.text()[:40], label.height(), need)
    assert set(widget.sections) == {"Run", "Similarity", "Export", "Advanced"}
    widget.sections["Advanced"].set_expanded(True)
    assert widget.device_combo.isVisibleTo(widget)


def test_upsampler_weights_control_and_message(qtbot, viewer_widget, offline_jbu, notes):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    assert not widget.upsampler_weights_combo.isVisibleTo(widget)  # bilinear has none
    widget.upsampler_combo.setCurrentText("featup-jbu")
    assert widget.upsampler_weights_combo.isVisibleTo(widget)
    assert widget.upsampler_weights_combo.currentData() == "published"
    # Weights = random already: the message must name the upsampler's control
    assert run_and_wait(qtbot, widget) == "error"
    msg = widget.last_error
    assert "Upsampler weights: file…" in msg and "Upsampler weights: random" in msg, msg
    assert "choose Weights: random" not in msg and "weights=PATH" not in msg, msg
    assert "napari-featup download dinov2" in msg
    widget.upsampler_weights_combo.setCurrentIndex(widget.upsampler_weights_combo.findData("file"))
    assert widget.upsampler_weights.isVisibleTo(widget)
    assert widget.run() is False and "Upsampler weights: file…" in widget.last_error
    widget.upsampler_weights_combo.setCurrentIndex(
        widget.upsampler_weights_combo.findData("random")
    )
    assert run_and_wait(qtbot, widget) == "done"
    info = viewer.layers["photo PCA featup-jbu"].metadata["napari_featup"]["upsampler_info"]
    assert "random" in str(info)


def test_estimate_before_a_long_run(viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((512, 512), np.uint8), name="big")
    assert widget.estimate_label.isVisibleTo(widget)
    assert "on cpu" in widget.estimate_label.text()
    widget.upsampler_combo.setCurrentText("featup-implicit")
    text = widget.estimate_label.text()
    assert "min" in text and "settings=preview" in text, text
    assert "ffaa33" in widget.estimate_label.styleSheet()  # over a minute: orange
    widget.upsampler_options.setText("settings=preview")
    widget.upsampler_options.editingFinished.emit()
    assert "settings=preview takes" not in widget.estimate_label.text()


def test_warm_up_runs_in_a_worker_when_the_widget_opens(qtbot, make_napari_viewer):
    from napari_featup.backbones import _core as backbones

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    key = ("vit", "random", "cpu", "torch.float32")
    backbones._CACHE.pop(key, None)
    with qtbot.waitSignal(widget.warmed_up, timeout=180_000) as blocker:
        widget.device_combo.setCurrentText("cpu")
        widget.backbone_combo.setCurrentText("vit")
        widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    qtbot.waitUntil(lambda: not widget.warm_up.running, timeout=180_000)
    result = widget.warm_up.result
    if result.get("skipped") or "backbone_s" not in result:  # an earlier setting's
        with qtbot.waitSignal(widget.warmed_up, timeout=180_000) as blocker:
            widget.request_warm_up()
        result = blocker.args[0]
    assert result["thread"] != threading.get_ident()  # never on the GUI thread
    assert result["backbone_s"] > 0 and key in backbones._CACHE  # the run will reuse it
    viewer.add_image(two_region_rgb(), name="photo")
    assert "calibrated" not in widget.estimate_label.text()


def test_nan_message_speaks_to_gui_users(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    img = np.random.default_rng(0).random((42, 42)).astype(np.float32)
    img[3, 4] = np.nan
    viewer.add_image(img, name="nan", contrast_limits=(0, 1))
    assert run_and_wait(qtbot, widget) == "error"
    assert "NaN" in widget.last_error and "np.nan_to_num" not in widget.last_error
    assert "fill or remove them" in widget.last_error


def test_mask_shows_up_on_the_heatmap(qtbot, viewer_widget):
    from napari.utils.interactions import mouse_press_callbacks

    from .test_dock import Click

    viewer, widget = viewer_widget
    image = viewer.add_image(two_region_rgb(), name="photo")
    assert run_and_wait(qtbot, widget) == "done"
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(image.data_to_world([20, 12]))))
    mask = widget.make_mask(0.5)
    colour = np.asarray(mask.colormap.map(1))[:3]
    heat = viewer.layers["photo similarity"].colormap
    # far from every colour of the inferno map (napari's first label colour is dark red)
    samples = np.asarray(heat.map(np.linspace(0, 1, 64)))[:, :3]
    assert np.linalg.norm(samples - colour, axis=1).min() > 0.5
    assert np.asarray(mask.colormap.map(0))[3] == 0  # background transparent
