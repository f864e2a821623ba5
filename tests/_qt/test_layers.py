"""Where the widget's layers go: order, replacement, the image picker, extents, stacks.

A real napari viewer under Xvfb; random weights, tiny images (see test_dock.py).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.interactions import mouse_press_callbacks  # noqa: E402
from qtpy.QtCore import QCoreApplication  # noqa: E402

from .test_dock import Click, run_and_wait, two_region_rgb, world_edges  # noqa: E402


def names(viewer) -> list[str]:
    return [lyr.name for lyr in viewer.layers]


def test_results_sit_above_their_image_and_a_rerun_replaces_them(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    image = viewer.add_image(two_region_rgb(), name="photo")
    viewer.add_image(np.zeros((30, 30), np.uint8), name="other")  # above the photo
    widget.set_image("photo")
    assert run_and_wait(qtbot, widget) == "done"
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(image.data_to_world([20, 12]))))
    expected = ["photo", "photo PCA low-res", "photo PCA bilinear", "photo similarity"]
    assert names(viewer) == expected + ["other", "FeatUp query"]

    # another upsampler: its results replace the old ones, below the heatmap and points
    widget.upsampler_combo.setCurrentText("jbu-classic")
    assert run_and_wait(qtbot, widget) == "done"
    expected[2] = "photo PCA jbu-classic"
    assert names(viewer) == expected + ["other", "FeatUp query"]
    assert viewer.layers["photo similarity"].metadata["napari_featup"]["upsampler"] == "jbu-classic"

    mask = widget.make_mask(0.5)
    assert names(viewer)[4] == mask.name and names(viewer)[-1] == "FeatUp query"
    # a renamed result is the user's: a new run leaves it
    viewer.layers["photo PCA jbu-classic"].name = "keep me"
    widget.upsampler_combo.setCurrentText("bilinear")
    assert run_and_wait(qtbot, widget) == "done"
    assert "keep me" in names(viewer) and "photo PCA bilinear" in names(viewer)


def test_image_picker_follows_new_and_selected_layers(viewer_widget):
    viewer, widget = viewer_widget
    a = viewer.add_image(two_region_rgb(), name="a")
    viewer.add_image(two_region_rgb(), name="b")
    assert widget.image_combo.currentText() == "b"  # newly added
    viewer.layers.selection.active = a
    assert widget.image_combo.currentText() == "a"  # selected in the layer list
    viewer.add_image(np.zeros((3, 42, 42), np.uint16), name="stack")
    assert widget.image_combo.currentText() == "stack"
    assert widget.channel_axis_combo.isVisibleTo(widget)  # the rows follow the image
    viewer.add_points(np.zeros((0, 2)), name="pts")  # not an image: the choice stays
    assert widget.image_combo.currentText() == "stack"


def test_lowres_layer_stops_at_the_image_edge(qtbot, viewer_widget):
    """512 px is 37 cells of 14 px = 518 px: the grid must not overhang the image."""
    viewer, widget = viewer_widget
    image = viewer.add_image(two_region_rgb(44, 50), name="photo", scale=(2.0, 3.0))
    assert run_and_wait(qtbot, widget) == "done"
    low = viewer.layers["photo PCA low-res"]
    np.testing.assert_allclose(world_edges(low), world_edges(image))
    assert low.metadata["napari_featup"]["grid"] == [4, 4]  # the metadata keeps the grid


def test_stack_slices_without_features_are_hidden_and_warned_once(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(2)
    data = rng.integers(0, 3000, (3, 42, 42), dtype=np.uint16)
    viewer.add_image(data, name="stack")
    viewer.dims.set_current_step(0, 0)
    assert run_and_wait(qtbot, widget) == "done"
    shown = ["stack PCA low-res", "stack PCA bilinear"]
    assert all(viewer.layers[n].visible for n in shown)
    with qtbot.waitSignal(widget.run_finished, timeout=180_000) as blocker:
        viewer.dims.set_current_step(0, 1)  # no features there: computed as it follows
        assert widget.jobs.running
        assert not any(viewer.layers[n].visible for n in shown)  # the image shows through
    assert blocker.args == ["done"]
    assert all(viewer.layers[n].visible for n in shown)
    widget.follow_slider.setChecked(False)
    viewer.dims.set_current_step(0, 2)
    assert not any(viewer.layers[n].visible for n in shown)
    viewer.dims.set_current_step(0, 0)
    assert all(viewer.layers[n].visible for n in shown)
    viewer.layers["stack PCA low-res"].visible = False  # the user's choice is kept
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(0, 1)
    assert not viewer.layers["stack PCA low-res"].visible
    assert sum("RANDOM WEIGHTS" in n for n in notes) == 1  # two runs, one warning


def test_query_layer_goes_with_the_last_image(qtbot, viewer_widget):
    """No image left: the query points have nothing to query, and napari 0.9 under Mesa
    crashes adding an image after the last one went while a points layer stays."""
    viewer, widget = viewer_widget
    first = viewer.add_image(np.zeros((32, 40), np.uint8), name="a")
    viewer.add_image(np.zeros((32, 40), np.uint8), name="b")
    query = widget.ensure_query_layer()
    assert query in viewer.layers
    viewer.layers.remove(first)  # another image remains: the points stay
    QCoreApplication.processEvents()  # runs a pending removal, if one was wrongly queued
    assert query in viewer.layers and widget.query_layer is query
    viewer.layers.remove("b")
    qtbot.wait_until(lambda: query not in viewer.layers)
    assert widget.query_layer is None
    viewer.add_image(np.zeros((32, 40), np.uint8), name="c")  # the crash's trigger
    assert widget.ensure_query_layer() in viewer.layers
