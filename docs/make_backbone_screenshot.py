"""Make docs/images/backbone_picker.png (the grouped list, open) and
docs/images/backbone_custom.png (a custom timm name, and a bad one).

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/make_backbone_screenshot.py

Nothing is run: the pictures show the picker only (no weights are loaded).
"""

from __future__ import annotations

import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "images"


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def dock_shot(app, widget, path: Path) -> None:
    """The dock and, if open, the combo's list above it (a separate window, so the
    screen is grabbed, cropped to the dock's rectangle)."""
    dock = widget.parentWidget() or widget
    top_left = dock.mapToGlobal(dock.rect().topLeft())
    pixmap = app.primaryScreen().grabWindow(
        0, top_left.x(), top_left.y(), dock.width(), min(dock.height(), 760)
    )
    pixmap.save(str(path))
    print("wrote", path)


def main() -> None:
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_featup._qt.backbone_picker import CUSTOM

    get_settings().application.gui_notification_level = "none"
    viewer = napari.Viewer(title="napari-featup: backbone picker", show=True)
    viewer.window.resize(1280, 800)
    app = QApplication.instance()
    viewer.open_sample("napari-featup", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.device_combo.setCurrentText("cpu")
    settle(app, 2.0)
    combo = widget.backbone_combo
    combo.setCurrentText("dinov2")
    combo.showPopup()
    settle(app, 1.0)
    view = combo.view()
    row = combo.findText("dinov3-s")
    view.setCurrentIndex(combo.model().index(row, 0))
    settle(app)
    dock_shot(app, widget, OUT / "backbone_picker.png")
    combo.hidePopup()

    panel = widget.settings_panel
    combo.setCurrentIndex(combo.findData(CUSTOM))
    panel.backbone_custom.setText("timm:vit_small_patch16_224.augreg_in21k")
    panel.backbone_custom.editingFinished.emit()
    settle(app, 1.0)
    good = panel.backbone_picker.message.text()
    dock_shot(app, widget, OUT / "backbone_custom.png")
    panel.backbone_custom.setText("timm:vit_smal_patch16_224")
    panel.backbone_custom.editingFinished.emit()
    settle(app, 1.0)
    dock_shot(app, widget, OUT / "backbone_custom_error.png")
    print(good, "|", panel.backbone_picker.message.text(), sep="\n")
    viewer.close()


if __name__ == "__main__":
    main()
