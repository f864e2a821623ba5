"""The Train JBU dock widget in a real viewer (xvfb-run -a): train, cancel, and the
trained file offered as upsampler weights in the FeatUp widget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_featup.session.recent import clear_recent_checkpoints, recent_checkpoints  # noqa: E402

TIMEOUT_MS = 240_000  # the first run builds the (random) backbone; the machine is shared


@pytest.fixture
def trainer(make_napari_viewer, tmp_path):
    clear_recent_checkpoints()
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), name="photo")
    viewer.add_image(rng.integers(0, 4000, (2, 36, 40), dtype=np.uint16), name="stack")
    _, w = viewer.window.add_plugin_dock_widget("napari-featup", "Train JBU")
    w.backbone_combo.setCurrentText("dino16")
    w.weights_combo.setCurrentIndex(w.weights_combo.findData("random"))
    w.device_combo.setCurrentText("cpu")
    w.size_spin.setValue(32)
    w.batch_spin.setValue(1)
    w.extra_options = {"n_jitters": 1, "crf_samples": 20}
    w.out_edit.setText(str(tmp_path / "mine.ckpt"))
    yield viewer, w
    clear_recent_checkpoints()


def test_train_then_offered_in_featup_widget(qtbot, trainer):
    viewer, w = trainer
    assert w.layer_list.count() == 2
    assert len(w.images()) == 2  # both layers selected by default
    w.steps_spin.setValue(2)
    with qtbot.waitSignal(w.finished, timeout=TIMEOUT_MS) as blocker:
        assert w.start()
    assert blocker.args == ["done"], w.status.text()
    out = Path(w.out_edit.text())
    assert out.is_file() and "Saved" in w.status.text() and w.bar.value() == w.bar.maximum()
    assert recent_checkpoints()[0].path == str(out.resolve())
    _, dock = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    panel = dock.settings_panel
    actions = panel.recent_button.menu().actions()
    assert len(actions) == 1
    panel.upsampler_combo.setCurrentText("featup-jbu")
    assert panel.recent_button.isVisibleTo(dock)
    actions[0].trigger()
    assert panel.upsampler_weights.text() == str(out.resolve())
    assert panel.upsampler_combo.currentText() == "featup-jbu"
    assert panel.upsampler_weights_combo.currentData() == "file"  # the path is what runs


def test_cancel_keeps_a_resumable_checkpoint(qtbot, trainer):
    _, w = trainer
    w.steps_spin.setValue(100_000)
    with qtbot.waitSignal(w.finished, timeout=TIMEOUT_MS) as blocker:
        assert w.start()
        qtbot.waitUntil(lambda: w.status.text().startswith("Step"), timeout=TIMEOUT_MS)
        w.cancel()
    assert blocker.args == ["cancelled"]
    assert Path(w.out_edit.text() + ".partial").is_file()
    assert not Path(w.out_edit.text()).exists()
    assert w.train_button.isEnabled() and not w.cancel_button.isEnabled()
