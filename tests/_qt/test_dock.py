"""The FeatUp dock widget driving a real napari viewer (run under Xvfb: xvfb-run -a).

Backbones use random weights (no downloads); images are tiny so a run takes well
under a second once the backbone is built (it is cached across tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

RUN_TIMEOUT_MS = 180_000  # the first run builds the backbone; the machine is shared


@dataclass
class Click:
    """The parts of a vispy mouse event the viewer's press callbacks read."""

    position: tuple
    modifiers: list = field(default_factory=lambda: ["Control"])
    type: str = "mouse_press"
    is_dragging: bool = False
    dims_displayed: tuple = (0, 1)
    view_direction: tuple | None = None
    button: int = 1
    handled: bool = False


def two_region_rgb(h: int = 56, w: int = 70) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 40, 40)
    img[:, w // 2 :] = (30, 60, 220)
    return img + rng.integers(0, 20, img.shape, dtype=np.uint8)


def run_and_wait(qtbot, widget, **kwargs) -> str:
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.run(**kwargs)
    return blocker.args[0]


def world_edges(layer) -> np.ndarray:
    """(2, ndim) outer pixel edges of a layer in world coordinates."""
    ext = np.asarray(layer.extent.world, float)
    half = np.asarray(layer.scale, float) / 2
    return np.stack([ext[0] - half, ext[1] + half])


def test_samples_open(make_napari_viewer):
    viewer = make_napari_viewer()
    for key, shape in [("astronaut", (512, 512, 3)), ("ihc", (512, 512, 3)), ("cell", (660, 550))]:
        (layer,) = viewer.open_sample("napari-featup", key)
        assert layer.data.shape == shape


def test_run_makes_aligned_layers(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    image = viewer.add_image(
        two_region_rgb(), name="photo", scale=(2.0, 3.0), translate=(10.0, -5.0)
    )
    assert widget.image_combo.currentText() == "photo"  # the picker follows the viewer
    assert run_and_wait(qtbot, widget) == "done"

    low = viewer.layers["photo PCA low-res"]
    full = viewer.layers["photo PCA bilinear"]
    assert low.data.shape == (4, 5, 3) and full.data.shape == (56, 70, 3)
    # the grid layer covers exactly the image (56 x 70 is 4 x 5 patches of 14 px)
    np.testing.assert_allclose(world_edges(low), world_edges(image))
    np.testing.assert_allclose(world_edges(full), world_edges(image))
    np.testing.assert_allclose(low.scale, [28.0, 42.0])
    np.testing.assert_allclose(low.translate, [10.0 + 6.5 * 2, -5.0 + 6.5 * 3])
    meta = full.metadata["napari_featup"]
    assert meta["backbone"] == "dinov2" and meta["upsampler"] == "bilinear"
    assert meta["random_weights"] is True and meta["source_layer"] == "photo"
    # same PCA colours: bilinear (align_corners=False) reproduces the corner cell exactly
    # at pixel (6, 6), whose source coordinate clamps to cell (0, 0)
    diff = full.data[6, 6].astype(int) - low.data[0, 0].astype(int)
    assert np.abs(diff).max() <= 1
    assert any("RANDOM WEIGHTS" in n for n in notes)
    # PCA layers are not offered as inputs
    assert [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())] == ["photo"]
    # the picker follows renames and new layers without losing the chosen one
    viewer.add_image(np.zeros((30, 30), np.uint8), name="other")
    widget.set_image("photo")
    image.name = "renamed"
    assert widget.image_combo.currentText() == "renamed"
    assert widget.current_stack() is not None  # features stay attached to the layer


def test_click_makes_similarity_heatmap_and_mask(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    image = viewer.add_image(
        two_region_rgb(), name="photo", scale=(2.0, 3.0), translate=(10.0, -5.0)
    )
    assert run_and_wait(qtbot, widget) == "done"
    pixel = np.array([20, 12])
    world = image.data_to_world(pixel)
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(world)))
    query = viewer.layers["FeatUp query"]
    assert len(query.data) == 1 and list(query.features["sign"]) == ["positive"]
    sim_layer = viewer.layers["photo similarity"]
    sim = sim_layer.data
    assert np.unravel_index(np.argmax(sim), sim.shape) == tuple(pixel)
    assert sim[tuple(pixel)] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(sim_layer.scale, image.scale)
    np.testing.assert_allclose(sim_layer.translate, image.translate)
    # same region scores higher than the other region
    assert sim[:, :30].mean() > sim[:, 40:].mean()

    # Ctrl+Shift-click: a negative point in the other region
    before = sim.copy()
    neg = image.data_to_world(np.array([30, 60]))
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(neg), modifiers=["Control", "Shift"]))
    assert list(query.features["sign"]) == ["positive", "negative"]
    np.testing.assert_allclose(
        query.face_color[:, :3], [[0.2, 0.867, 0.333], [1.0, 0.2, 0.8]], atol=0.01
    )  # green positive, magenta negative
    assert sim_layer.data[30, 60] < before[30, 60]
    # a plain click (no modifier) adds nothing
    mouse_press_callbacks(viewer, Click(position=tuple(world), modifiers=[]))
    assert len(query.data) == 2

    mask = widget.make_mask(0.5)
    assert mask.__class__.__name__ == "Labels" and mask.name == "photo similarity mask"
    assert mask.data[tuple(pixel)] == 1
    np.testing.assert_array_equal(mask.data, (sim_layer.data >= 0.5).astype(np.uint8))


def test_second_run_refused_and_event_loop_runs(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    ticks = []
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(widget.jobs.running))
    timer.start(5)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS):
        assert widget.run()
        assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
        assert widget.run() is False  # refused, not doubled
    timer.stop()
    assert any(ticks), "the Qt event loop did not run while the worker was computing"
    assert any("already running" in n for n in notes)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    names = [lyr.name for lyr in viewer.layers]
    assert names.count("photo PCA bilinear") == 1


def test_cancel_leaves_viewer_unchanged(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    before = [lyr.name for lyr in viewer.layers]
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        assert widget.run()
        widget.cancel_button.click()
    assert blocker.args == ["cancelled"]
    assert [lyr.name for lyr in viewer.layers] == before
    assert not widget.jobs.running and widget.run_button.isEnabled()
    assert "Cancelled" in widget.status.text()


def test_stack_displayed_slice_all_slices_and_slider(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(2)
    data = rng.integers(0, 3000, (3, 42, 42), dtype=np.uint16)
    data[:, :, 21:] += 30000
    image = viewer.add_image(data, name="stack", scale=(4.0, 1.0, 1.0))
    widget.follow_slider.setChecked(False)
    viewer.dims.set_current_step(0, 1)
    assert run_and_wait(qtbot, widget) == "done"
    stack = widget.current_stack()
    assert sorted(stack.results) == [(1,)]  # the displayed slice only
    full = viewer.layers["stack PCA bilinear"]
    assert full.data.shape == (3, 42, 42, 3) and full.data[0].max() == 0 and full.data[1].max() > 0
    np.testing.assert_allclose(viewer.layers["stack PCA low-res"].scale, [4.0, 14.0, 14.0])

    # all slices, with progress over every plane
    widget.slices_combo.setCurrentIndex(widget.slices_combo.findData("all"))
    steps = []
    widget.jobs.progressed.connect(lambda ev: steps.append((ev.done, ev.total, ev.message)))
    assert run_and_wait(qtbot, widget) == "done"
    stack = widget.current_stack()
    assert sorted(stack.results) == [(0,), (1,), (2,)]
    assert steps[-1][1] == 19 and any("plane (2,)" in m for _, _, m in steps)

    # a query on slice 1; moving the slider shows slice 2's similarity
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(image.data_to_world([1, 10, 10]))))
    sim = viewer.layers["stack similarity"].data
    assert np.unravel_index(np.argmax(sim[1]), sim[1].shape) == (10, 10)
    assert sim[2].max() == 0  # not computed until shown
    viewer.dims.set_current_step(0, 2)
    assert sim[2].max() > 0 and (2,) not in stack.stale_similarity

    # following the slider computes a slice that has no features yet
    widget.slices_combo.setCurrentIndex(widget.slices_combo.findData("displayed"))
    viewer.dims.set_current_step(0, 0)
    assert run_and_wait(qtbot, widget) == "done"
    assert sorted(widget.current_stack().results) == [(0,)]
    widget.follow_slider.setChecked(True)
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as blocker:
        viewer.dims.set_current_step(0, 2)
    assert blocker.args == ["done"]
    assert sorted(widget.current_stack().results) == [(0,), (2,)]


def test_multichannel_layer_with_channel_axis(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(3)
    data = rng.integers(0, 1000, (4, 42, 56), dtype=np.uint16)  # (C, Y, X) in one layer
    viewer.add_image(data, name="channels", scale=(1.0, 0.5, 0.5))
    assert widget.channel_axis_combo.isVisibleTo(widget)
    widget.channel_axis_combo.setCurrentIndex(1)  # axis 0 holds channels
    widget.channels_edit.setText("3,1,0")
    assert not widget.slices_combo.isVisibleTo(widget)  # no stack axis left
    assert run_and_wait(qtbot, widget) == "done"
    full = viewer.layers["channels PCA bilinear"]
    assert full.data.shape == (42, 56, 3)  # one plane: the channel axis is consumed
    np.testing.assert_allclose(full.scale, [0.5, 0.5])
    prep = full.metadata["napari_featup"]["preprocessing"]
    assert prep["channels"] == [3, 1, 0] and prep["layout"] == "multichannel"
    assert prep["scaling"] == "contrast_limits"


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_export_and_reopen(qtbot, viewer_widget, tmp_path, suffix):
    viewer, widget = viewer_widget
    image = viewer.add_image(two_region_rgb(), name="photo", scale=(2.0, 2.0))
    assert run_and_wait(qtbot, widget) == "done"
    with qtbot.waitSignal(widget.similarity_updated, timeout=10_000):
        mouse_press_callbacks(viewer, Click(position=tuple(image.data_to_world([20, 12]))))
    path = tmp_path / f"photo.featup{suffix}"  # FeatUp's suffix (issue 17)
    widget.export(path)
    with pytest.raises(FileExistsError):
        widget.export(path)  # nothing is overwritten without asking
    widget.export(path, overwrite=True)

    from napari_featup.io import load_features

    res = load_features(path)
    stack = widget.current_stack()
    np.testing.assert_allclose(res.lowres, stack.results[()].lowres)
    assert res.metadata["backbone"] == "dinov2" and res.pca is not None

    low_before = viewer.layers["photo PCA low-res"].data.copy()
    full_before = viewer.layers["photo PCA bilinear"].data.copy()
    sim_before = viewer.layers["photo similarity"].data.copy()
    viewer.layers.clear()
    if suffix == ".zarr":  # napari cannot route folders by name: the widget opens them
        layers = widget.open_features(path)
    else:
        layers = viewer.open(str(path), plugin="napari-featup")
    names = [lyr.name for lyr in layers]
    assert names == ["photo PCA low-res", "photo PCA bilinear", "photo similarity"]
    np.testing.assert_array_equal(viewer.layers["photo PCA low-res"].data, low_before)
    np.testing.assert_array_equal(viewer.layers["photo PCA bilinear"].data, full_before)
    np.testing.assert_allclose(viewer.layers["photo similarity"].data, sim_before)
    np.testing.assert_allclose(viewer.layers["photo PCA low-res"].scale, [28.0, 28.0])
    np.testing.assert_allclose(viewer.layers["photo PCA low-res"].translate, [13.0, 13.0])


def test_save_layers_through_napari(qtbot, viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    assert run_and_wait(qtbot, widget) == "done"
    path = tmp_path / "pca.featup.npz"  # the writer's extensions carry FeatUp's suffix
    saved = viewer.layers.save(str(path), selected=False, plugin="napari-featup")
    assert saved == [str(path)]
    # saving again replaces the file (napari's Save dialog has asked), now with one layer
    viewer.layers.selection = {viewer.layers["photo PCA bilinear"]}
    assert viewer.layers.save(str(path), selected=True, plugin="napari-featup") == [str(path)]
    viewer.layers.clear()
    back = viewer.open(str(path), plugin="napari-featup")
    assert [lyr.name for lyr in back] == ["photo PCA bilinear"]
    assert back[-1].metadata["napari_featup"]["backbone"] == "dinov2"


# ------------------------------------------------------------------ errors
def test_error_no_image(viewer_widget, notes):
    viewer, widget = viewer_widget
    assert widget.run() is False
    assert "no image layer" in widget.last_error and "Open Sample" in widget.last_error
    assert any("no image layer" in n for n in notes)


def test_error_labels_layer(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="seg")
    assert widget.image_combo.count() == 0  # labels are not offered
    assert widget.run() is False
    assert "'seg' is a Labels layer" in widget.last_error
    assert any("Labels layer" in n for n in notes)


def test_error_image_smaller_than_patch(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((10, 30), np.uint8), name="tiny")
    assert widget.run() is False
    assert "smaller than one 14 px patch" in widget.last_error
    assert not widget.jobs.running


def test_error_missing_weights(qtbot, viewer_widget, tmp_path, notes):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("file"))
    assert widget.run() is False and "no file is given" in widget.last_error
    widget.weights_path.setText(str(tmp_path / "missing.safetensors"))
    assert run_and_wait(qtbot, widget) == "error"
    assert "Weights are missing" in widget.last_error and "random" in widget.last_error
    assert [lyr.name for lyr in viewer.layers] == ["photo"]
    assert widget.run_button.isEnabled()


def test_error_pretrained_weights_offline(qtbot, viewer_widget, tmp_path, monkeypatch, notes):
    """A real hub look-up with the Hugging Face hub offline and an empty cache."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    widget.backbone_combo.setCurrentText("dinov2-reg")  # not cached by other tests
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("pretrained"))
    assert run_and_wait(qtbot, widget) == "error"
    assert "napari-featup download dinov2-reg" in widget.last_error
    assert any("download" in n for n in notes)
    assert [lyr.name for lyr in viewer.layers] == ["photo"]
    assert widget.run_button.isEnabled()


def test_error_out_of_memory(qtbot, viewer_widget, monkeypatch, notes):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 6.4 GiB for an array")
        yield  # a generator, like iter_extract

    monkeypatch.setattr("napari_featup.session.run.iter_extract", exhausted)
    assert run_and_wait(qtbot, widget) == "error"
    assert "ran out of memory" in widget.last_error
    assert "displayed slice" in widget.last_error
    assert any("ran out of memory" in n for n in notes)
    assert [lyr.name for lyr in viewer.layers] == ["photo"]


def test_upsampler_weights_reach_the_upsampler(qtbot, viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    widget.upsampler_weights.setText(str(tmp_path / "jbu.ckpt"))
    # bilinear has no weights: the field (hidden for it) is not passed to it
    assert "upsampler_weights" not in widget.settings()
    widget.upsampler_combo.setCurrentText("featup-jbu")
    assert widget.settings()["upsampler_weights"] == str(tmp_path / "jbu.ckpt")
    assert run_and_wait(qtbot, widget) == "error"  # no such file
    assert "jbu.ckpt" in widget.last_error
    assert [lyr.name for lyr in viewer.layers] == ["photo"]


def test_upsampler_options_reach_the_upsampler(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    assert not widget.upsampler_options.isEnabled()  # bilinear takes none
    widget.upsampler_combo.setCurrentText("featup-implicit")
    assert widget.upsampler_options.isEnabled()
    assert "settings=fast" in widget.upsampler_options.placeholderText()

    widget.upsampler_options.setText("steps")
    assert widget.run() is False and "KEY=VALUE" in widget.last_error
    assert not widget.jobs.running

    widget.upsampler_options.setText("bogus=1")
    assert run_and_wait(qtbot, widget) == "error"
    assert "bogus" in widget.last_error
    assert [lyr.name for lyr in viewer.layers] == ["photo"]

    widget.upsampler_options.setText("steps=3, views=4, pca_views=4, batch=2, seed=5")
    # options typed for one upsampler stay with it
    widget.upsampler_combo.setCurrentText("jbu-classic")
    assert widget.upsampler_options.text() == ""
    widget.upsampler_combo.setCurrentText("featup-implicit")
    assert widget.upsampler_options.text().startswith("steps=3")
    assert run_and_wait(qtbot, widget) == "done"
    info = viewer.layers["photo PCA featup-implicit"].metadata["napari_featup"]["upsampler_info"]
    assert info["steps_done"] == 3 and info["seed"] == 5
    assert info["settings"]["views"] == 4


# ------------------------------------------------- settings errors by type
def test_channels_typo_is_reported_as_settings(viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((3, 42, 42), np.uint16), name="channels")
    widget.channel_axis_combo.setCurrentIndex(1)
    widget.channels_edit.setText("0,a,2")
    assert widget.run() is False and not widget.jobs.running
    assert widget.last_error.startswith("Channels '0,a,2' are not understood")
    assert any("not understood" in n for n in notes)


def test_a_bug_is_not_reported_as_a_channels_typo(viewer_widget, monkeypatch):
    """Only SettingsError means "fix a setting": another ValueError is a bug and is
    raised, not dressed up as a typo in the channels field."""
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")

    def broken(*args, **kwargs):
        raise ValueError("invalid literal for int() with base 10: 'x'")

    monkeypatch.setattr("napari_featup._qt.dock.plan_run", broken)
    with pytest.raises(ValueError, match="invalid literal"):
        widget.run()
    assert widget.last_error is None and not widget.jobs.running


def test_progress_bar_and_status_follow_the_events(qtbot, viewer_widget, monkeypatch):
    """The worker's Progress events reach the GUI thread as objects; napari's bar shows
    their fraction (1000 ticks) and the status line the loss of a fit."""
    from napari_featup import pipeline
    from napari_featup.progress import Progress, drive

    def fitting(image, **kwargs):
        res = drive(pipeline.iter_extract(image, **kwargs))
        for i in range(1, 6):
            yield Progress(i, 5, f"fit step {i}", stage="fit", loss=0.5 / i)
        return res

    monkeypatch.setattr("napari_featup.session.run.iter_extract", fitting)
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    seen = []

    def record(ev):
        bar = widget.jobs.bar
        seen.append((ev, bar.n, bar.total, widget.status.text()))

    widget.jobs.progressed.connect(record)
    assert run_and_wait(qtbot, widget) == "done"
    assert all(isinstance(ev, Progress) for ev, *_ in seen)
    assert all(total == 1000 for _, _, total, _ in seen)
    # listeners hear an event before the bar is moved to it: each sees the previous one
    assert seen[0][1] == 0
    for (prev, *_), (_, n, _, _) in zip(seen, seen[1:]):
        assert n == round(prev.fraction * 1000)
    fits = [(ev, text) for ev, _, _, text in seen if ev.stage == "fit"]
    assert len({ev.done for ev, _ in fits}) == 5  # the bar moves during the fit
    assert fits[-1][1] == "57%: fit step 5 (loss 0.1)"  # 4 of 7 units
    assert seen[-1][0].fraction == 1.0
