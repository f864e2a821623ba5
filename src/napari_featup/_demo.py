"""``napari-featup demo``: napari with a sample image and the FeatUp widget docked."""

from __future__ import annotations

from typing import Any


def setup_demo(viewer: Any, sample: str = "astronaut", weights: str = "auto") -> Any:
    """Add the plugin's ``sample`` image and dock widget to ``viewer``; return the widget.

    ``weights="auto"`` selects pretrained weights when the default backbone's are cached
    and otherwise random (untrained) ones, flagged in the widget, so the demo runs offline.
    """
    from .backbones import pretrained_cached

    viewer.open_sample("napari-featup", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    if weights == "auto":
        backbone = widget.backbone_combo.currentText()
        weights = "pretrained" if pretrained_cached(backbone) else "random"
    index = widget.weights_combo.findData(weights)
    if index < 0:
        raise ValueError(f"unknown weights choice {weights!r}; use auto, pretrained or random")
    widget.weights_combo.setCurrentIndex(index)
    return widget


def run_demo(sample: str = "astronaut", weights: str = "auto") -> None:
    """Open a viewer set up by :func:`setup_demo` and block until it is closed."""
    import napari

    viewer = napari.Viewer(title="napari-featup demo")
    setup_demo(viewer, sample, weights)
    napari.run()
