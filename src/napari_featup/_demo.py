"""``napari-featup demo``: napari with a sample image and the FeatUp widget docked."""

from __future__ import annotations


def run_demo(sample: str = "astronaut") -> None:
    """Open a viewer with the plugin's ``sample`` image and its dock widget; block until closed."""
    import napari

    viewer = napari.Viewer(title="napari-featup demo")
    viewer.open_sample("napari-featup", sample)
    viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    napari.run()
