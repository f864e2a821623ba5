"""The Text row of the FeatUp dock in a real napari viewer (run under xvfb-run -a)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import Qt  # noqa: E402

RUN_TIMEOUT_MS = 240_000  # builds a ViT-B/16 backbone and text tower on a shared CPU


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.device_combo.setCurrentText("cpu")
    widget.upsampler_combo.setCurrentText("bilinear")
    return viewer, widget


def _run_then_enter(widget, qtbot, prompts: str):
    """Run on the selected image, then type ``prompts`` (plain templates) and press Enter;
    returns the Text row once its heatmaps are shown."""
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as run:
        assert widget.run()
    assert run.args[0] == "done"
    panel = widget.text_panel
    panel.templates_combo.setCurrentIndex(panel.templates_combo.findData("plain"))
    panel.set_prompts(prompts)
    with qtbot.waitSignal(panel.text_updated, timeout=RUN_TIMEOUT_MS):
        qtbot.keyClick(panel.prompt_edit, Qt.Key_Return)  # Enter submits
    return panel


def test_disabled_without_text_tower(viewer_widget):
    _, widget = viewer_widget
    panel = widget.text_panel
    widget.backbone_combo.setCurrentText("dinov2")
    assert not panel.prompt_edit.isEnabled() and not panel.label_button.isEnabled()
    assert "clip, maskclip" in panel.prompt_edit.toolTip()
    assert "dinov2" in panel.prompt_edit.toolTip()
    widget.backbone_combo.setCurrentText("maskclip")
    assert panel.prompt_edit.isEnabled() and panel.label_button.isEnabled()
    # SigLIP 2: its patch tokens have no text partner, its dense head's do
    widget.backbone_combo.setCurrentText("siglip2-b")
    assert not panel.prompt_edit.isEnabled()
    assert "choose siglip2-b-dense" in panel.prompt_edit.toolTip()
    widget.backbone_combo.setCurrentText("siglip2-b-dense")
    assert panel.prompt_edit.isEnabled() and panel.label_button.isEnabled()


def test_prompts_to_heatmaps_and_label_map(viewer_widget, qtbot, tmp_path):
    viewer, widget = viewer_widget
    widget.backbone_combo.setCurrentText("clip")
    img = np.zeros((40, 50, 3), np.uint8)
    img[:, 25:] = (200, 180, 40)
    viewer.add_image(img, name="cells")
    panel = _run_then_enter(widget, qtbot, "nucleus, membrane\nbackground")
    names = [f"cells text: {p}" for p in ("nucleus", "membrane", "background")]
    assert all(n in viewer.layers for n in names)
    heat = viewer.layers[names[0]]
    assert heat.data.shape == (40, 50) and heat.metadata["napari_featup"]["prompt"] == "nucleus"
    assert heat.metadata["napari_featup"]["random_weights"] is True

    labels = panel.make_label_map(threshold=0.0)
    assert labels.name == "cells text labels" and labels.data.shape == (40, 50)
    assert int(labels.data.max()) <= 3
    assert "background" in panel.legend.text() and "none of these" in panel.legend.text()

    # fewer prompts: the dropped prompt's layer goes, and export keeps the prompts
    panel.set_prompts("nucleus")
    with qtbot.waitSignal(panel.text_updated, timeout=RUN_TIMEOUT_MS):
        assert panel.run_text()
    assert names[0] in viewer.layers and names[1] not in viewer.layers
    from napari_featup.io import load_features

    out = widget.export(tmp_path / "cells.npz")
    assert load_features(out).metadata["text"]["prompts"] == ["nucleus"]


def test_siglip2_dense_prompts_to_heatmaps(viewer_widget, qtbot, siglip2_tokenizer_cached):
    """The same row on SigLIP 2 (random weights; the stand-in tokenizer in the cache)."""
    viewer, widget = viewer_widget
    widget.backbone_combo.setCurrentText("siglip2-b-dense")
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8), name="c")
    _run_then_enter(widget, qtbot, "nucleus, background")
    heat = viewer.layers["c text: nucleus"]
    assert heat.data.shape == (40, 50) and "c text: background" in viewer.layers
    assert heat.metadata["napari_featup"]["random_weights"] is True


def test_cli_text_layers_open_in_napari(make_napari_viewer, tmp_path):
    """napari's File > Open of an ``extract --text`` file shows the prompts' heatmaps and
    the label map next to the PCA layers (through napari's reader choice)."""
    from napari_featup.cli import EXIT_OK, main

    rng = np.random.default_rng(3)
    image = tmp_path / "cells.npy"
    np.save(image, rng.integers(0, 255, (30, 44, 3), dtype=np.uint8))
    out = tmp_path / "cells.featup.npz"
    argv = [
        "extract", str(image), "-b", "maskclip", "--weights", "random", "-q", "-o", str(out),
        "--text", "nucleus", "--text", "membrane", "--text-templates", "plain",
    ]  # fmt: skip
    assert main(argv) == EXIT_OK
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")  # the plugin in use
    layers = viewer.open(str(out), plugin=None)
    names = [lyr.name for lyr in layers]
    assert "cells text: nucleus" in names and "cells text: membrane" in names, names
    labels = viewer.layers["cells text labels"]
    assert type(labels).__name__ == "Labels" and labels.data.shape == (30, 44)
    assert list(labels.features["prompt"]) == ["none of these", "nucleus", "membrane"]
    heat = viewer.layers["cells text: nucleus"]
    assert heat.data.shape == (30, 44) and heat.metadata["napari_featup"]["random_weights"]
    assert labels.colormap.map(1)[..., 3].max() == 1.0  # prompt 1 coloured, 0 transparent
    assert labels.colormap.map(0)[..., 3].max() == 0.0


@pytest.fixture
def refining(viewer_widget, qtbot, monkeypatch, request):
    """A featup-jbu run (random weights) of a 64 x 64 image whose similarity basis is
    smaller than the channels (so the fast maps are not exact), and a gate that holds
    every background refinement until ``gate.set()``."""
    import threading

    import napari_featup._qt.refine as refine_qt
    import napari_featup.session.stack as stack_mod

    monkeypatch.setattr(stack_mod, "compact_rank", lambda *a, **k: 8)
    gate = threading.Event()
    request.addfinalizer(gate.set)  # never leave a worker waiting
    real = refine_qt.exact_maps

    def gated(ref):
        assert gate.wait(RUN_TIMEOUT_MS / 1000)
        return real(ref)

    monkeypatch.setattr(refine_qt, "exact_maps", gated)
    viewer, widget = viewer_widget
    widget.backbone_combo.setCurrentText("clip")
    widget.upsampler_combo.setCurrentText("featup-jbu")
    combo = widget.upsampler_weights_combo
    combo.setCurrentIndex(combo.findData("random"))
    img = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    viewer.add_image(img, name="cells")
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as run:
        assert widget.run()
    assert run.args[0] == "done"
    panel = widget.text_panel
    panel.templates_combo.setCurrentIndex(panel.templates_combo.findData("plain"))
    return viewer, widget, panel, gate


def _enter(qtbot, panel, prompts):
    panel.set_prompts(prompts)
    with qtbot.waitSignal(panel.text_updated, timeout=RUN_TIMEOUT_MS):
        qtbot.keyClick(panel.prompt_edit, Qt.Key_Return)


def _layers(viewer, prompts):
    return [viewer.layers[f"cells text: {p}"] for p in prompts]


def _exact(panel):
    from napari_featup.text import text_similarity

    stack = panel.text.stack
    return text_similarity(stack.results[()], panel.text.embeddings)


def _done(status):
    return status == "done"


def test_fast_maps_then_exact_maps(refining, qtbot):
    from napari_featup.text import label_map, stack_text_similarity

    viewer, _, panel, gate = refining
    prompts = ["nucleus", "membrane", "background"]
    _enter(qtbot, panel, ", ".join(prompts))
    fast, bounds = stack_text_similarity(panel.text.stack, (), panel.text.embeddings)
    for i, lyr in enumerate(_layers(viewer, prompts)):  # the fast maps, at once
        np.testing.assert_allclose(lyr.data, fast[i], atol=1e-6)
        assert lyr.metadata["napari_featup"]["similarity_error_bound"] == bounds[i] > 0
    labels = panel.make_label_map()  # "off": every pixel gets a prompt
    assert panel.refining() and "exact" in panel.status.text()
    with qtbot.waitSignal(panel.refined, timeout=RUN_TIMEOUT_MS, check_params_cb=_done):
        gate.set()
    exact = _exact(panel)
    assert np.abs(exact - fast).max() > 1e-4  # the refinement changed the maps
    for i, lyr in enumerate(_layers(viewer, prompts)):
        np.testing.assert_allclose(lyr.data, exact[i], atol=1e-5)
        assert lyr.metadata["napari_featup"]["similarity_error_bound"] == 0.0
    assert viewer.layers["cells text labels"].unique_id == labels.unique_id  # in place
    np.testing.assert_array_equal(labels.data, label_map(exact, prompts)[0])
    np.testing.assert_array_equal(labels.data, exact.argmax(axis=0) + 1)
    assert not panel.refining() and panel.status.text() == ""


def test_a_new_enter_or_closing_drops_the_refinement(refining, qtbot):
    viewer, widget, panel, gate = refining
    statuses = []
    panel.refined.connect(statuses.append)
    _enter(qtbot, panel, "nucleus, background")  # its refinement waits at the gate
    second = ["background", "nucleus"]  # same layers, other order: other label values
    _enter(qtbot, panel, ", ".join(second))
    with qtbot.waitSignal(panel.refined, timeout=RUN_TIMEOUT_MS, check_params_cb=_done):
        gate.set()
    assert statuses == ["dropped", "done"]
    exact = _exact(panel)
    for i, lyr in enumerate(_layers(viewer, second)):
        np.testing.assert_allclose(lyr.data, exact[i], atol=1e-5)
        assert lyr.metadata["napari_featup"]["similarity_error_bound"] == 0.0

    gate.clear()  # a new prompt's refinement, then the widget closes
    _enter(qtbot, panel, "membrane")
    fast = _layers(viewer, ["membrane"])[0].data.copy()
    assert panel.refining()
    with qtbot.waitSignal(panel.refined, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.close()
        gate.set()
    assert blocker.args == ["dropped"]
    lyr = _layers(viewer, ["membrane"])[0]
    np.testing.assert_array_equal(lyr.data, fast)
    assert lyr.metadata["napari_featup"]["similarity_error_bound"] > 0


def test_a_new_run_drops_the_refinement(refining, qtbot):
    viewer, widget, panel, gate = refining
    statuses = []
    panel.refined.connect(statuses.append)
    _enter(qtbot, panel, "nucleus, background")
    old = panel.text
    with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS):
        assert widget.run()  # its start drops the refinement; new features, asked again
    with qtbot.waitSignal(panel.refined, timeout=RUN_TIMEOUT_MS, check_params_cb=_done):
        gate.set()
    assert statuses == ["dropped", "done"] and panel.text is not old
    exact = _exact(panel)
    for i, lyr in enumerate(_layers(viewer, ["nucleus", "background"])):
        np.testing.assert_allclose(lyr.data, exact[i], atol=1e-5)
