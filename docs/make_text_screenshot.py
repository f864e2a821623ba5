"""Make docs/images/text_panel.png: the Text row with heatmaps and a label map.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/make_text_screenshot.py

The backbone and its text tower use RANDOM weights (no downloads), and the picture says
so: it shows the interface, not what CLIP sees.
"""

from __future__ import annotations

import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "images" / "text_panel.png"


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)
    try:  # close notification pop-ups that would hide the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for w in app.allWidgets():
            if isinstance(w, NapariQtNotification):
                w.close()
        app.processEvents()
    except ImportError:
        pass


def wait(app, flag: list, timeout: float = 900.0) -> None:
    t0 = time.time()
    while not flag:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("timed out")


def main() -> None:
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication, QScrollArea

    get_settings().application.gui_notification_level = "none"
    viewer = napari.Viewer(title="napari-featup: text queries (RANDOM weights)", show=True)
    viewer.window.resize(1400, 1000)
    app = QApplication.instance()
    (image,) = viewer.open_sample("napari-featup", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.backbone_combo.setCurrentText("maskclip")
    widget.upsampler_combo.setCurrentText("bilinear")
    widget.device_combo.setCurrentText("cpu")
    done: list = []
    widget.run_finished.connect(done.append)
    widget.run()
    wait(app, done)

    panel = widget.text_panel
    panel.templates_combo.setCurrentIndex(panel.templates_combo.findData("plain"))
    panel.set_prompts("face, helmet, sky")
    shown: list = []
    panel.text_updated.connect(lambda: shown.append(1))
    panel.run_text()
    wait(app, shown)
    panel.threshold_spin.setValue(0.0)
    panel.make_label_map()
    for lyr in viewer.layers:  # the label map over the image; heatmaps hidden
        lyr.visible = lyr.name in (image.name, f"{image.name} text labels")
    viewer.text_overlay.visible = True
    viewer.text_overlay.text = "RANDOM WEIGHTS\ninterface only:\nthe maps mean nothing"
    viewer.text_overlay.font_size = 13
    viewer.text_overlay.color = "yellow"
    viewer.text_overlay.position = "top_left"
    for area in widget.findChildren(QScrollArea):  # show the Similarity section
        area.ensureWidgetVisible(panel)
    parent = widget.parent()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parent()
    if parent is not None:
        parent.ensureWidgetVisible(panel)
    settle(app, 1.5)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    viewer.window.screenshot(str(OUT), canvas_only=False, flash=False)
    print(f"wrote {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
