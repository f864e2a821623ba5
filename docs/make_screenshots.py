"""Make the user guide's screenshots from a real (headless) napari window.

Run under a virtual display::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/make_screenshots.py

Writes PNGs to docs/images/, in napari's default window size (1280 x 800, where the
dock must fit) and one larger (``widget_large.png``, ``--large``). The backbone uses
RANDOM weights unless ``--weights pretrained`` is given and the weights are in the
local cache: the screenshots then show the interface, not meaningful features, and
say so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def wait_for(widget, app, timeout: float = 900.0) -> str:
    done: list[str] = []
    widget.run_finished.connect(done.append)
    t0 = time.time()
    while not done:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the FeatUp run did not finish")
    widget.run_finished.disconnect(done.append)
    return done[0]


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)
    try:  # close notification pop-ups (e.g. napari's PyQt5 notice) that hide the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for w in app.allWidgets():
            if isinstance(w, NapariQtNotification):
                w.close()
        app.processEvents()
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default="random", choices=["random", "pretrained"])
    ap.add_argument("--backbone", default="dinov2")
    ap.add_argument("--size", default="1280x800", help="window size of the screenshots")
    ap.add_argument("--large", default="1400x960", help="window size of widget_large.png")
    args = ap.parse_args()
    size = [int(v) for v in args.size.split("x")]
    large = [int(v) for v in args.large.split("x")]

    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    # no pop-up notifications over the canvas (napari's own PyQt5 notice among them);
    # the widget's status line says the same
    get_settings().application.gui_notification_level = "none"

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-featup", show=True)
    viewer.window.resize(*size)
    app = QApplication.instance()
    (image,) = viewer.open_sample("napari-featup", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData(args.weights))
    widget.backbone_combo.setCurrentText(args.backbone)
    widget.device_combo.setCurrentText("cpu")
    settle(app)
    viewer.window.screenshot(str(OUT / "widget.png"), canvas_only=False, flash=False)

    while widget.warm_up.running:  # (a run would wait for it too)
        settle(app, 0.2)
    widget.run()
    settle(app, 1.0)
    viewer.window.screenshot(str(OUT / "running.png"), canvas_only=False, flash=False)
    status = wait_for(widget, app)
    if status != "done":
        raise RuntimeError(f"run ended with {status}: {widget.last_error}")
    # side by side: image, low-res grid, full-resolution PCA
    viewer.grid.enabled = True
    viewer.grid.stride = 1
    viewer.reset_view()
    settle(app)
    viewer.window.screenshot(str(OUT / "pca_grid.png"), canvas_only=False, flash=False)
    viewer.grid.enabled = False

    # similarity: two positive points on the face, one negative on the background
    for (r, c), mods in [
        ((120, 230), ["Control"]),
        ((200, 300), ["Control"]),
        ((60, 440), ["Control", "Shift"]),
    ]:
        from napari.utils.interactions import mouse_press_callbacks

        class Click:  # the fields a viewer press callback reads
            type = "mouse_press"
            position = tuple(image.data_to_world(np.array([r, c])))
            modifiers = mods
            is_dragging = False
            handled = False

        mouse_press_callbacks(viewer, Click())
    for name in ("astronaut PCA low-res", f"astronaut PCA {widget.upsampler_combo.currentText()}"):
        viewer.layers[name].visible = False
    viewer.reset_view()
    settle(app)
    viewer.window.screenshot(str(OUT / "similarity.png"), canvas_only=False, flash=False)

    mask = widget.make_mask(0.6)
    mask.opacity = 0.6
    viewer.layers["astronaut similarity"].visible = False
    settle(app)
    viewer.window.screenshot(str(OUT / "mask.png"), canvas_only=False, flash=False)

    # a greyscale microscopy sample
    viewer.layers.clear()
    viewer.open_sample("napari-featup", "cell")
    widget.set_image("cell")
    widget.norm_combo.setCurrentIndex(widget.norm_combo.findData("percentile"))
    widget.run()
    if wait_for(widget, app) != "done":
        raise RuntimeError(widget.last_error)
    viewer.layers["cell PCA low-res"].visible = False
    viewer.layers[f"cell PCA {widget.upsampler_combo.currentText()}"].opacity = 0.6
    viewer.reset_view()
    settle(app)
    viewer.window.screenshot(str(OUT / "microscopy.png"), canvas_only=False, flash=False)

    # a larger window, every section open
    viewer.window.resize(*large)
    for section in widget.sections.values():
        section.set_expanded(True)
    settle(app)
    viewer.window.screenshot(str(OUT / "widget_large.png"), canvas_only=False, flash=False)
    viewer.close()
    print("wrote", sorted(p.name for p in OUT.glob("*.png")))


if __name__ == "__main__":
    main()
