"""The dock under hurried use, in a real viewer (run under Xvfb: xvfb-run -a): Run
pressed again while running, the image layer switched, the upsampler changed and
Cancel pressed mid-run, in a seeded random loop, then the viewer closed mid-run.

After every run: it finished (``run_finished``) and the widget is idle again (Run
enabled, Cancel disabled, no worker); a run that finished shows the results of the
layer and upsampler chosen when Run was pressed (not those switched to); no error
notification and no exception anywhere (pytest-qt fails the test on an exception in
a Qt slot). After closing the viewer mid-run: the run's worker finishes (its
``finished`` signal arrives), Qt's thread pool has no thread left and the warm-up
thread has ended. Waits are on signals (and Qt's own ``waitForDone``), never sleeps.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402
from qtpy.QtCore import QObject, QThreadPool, Signal  # noqa: E402

RUN_TIMEOUT_MS = 180_000  # the first run builds the backbone; the machine is shared
UPSAMPLERS = ["bilinear", "jbu-classic", "featup-jbu"]
ROUNDS = 8


@pytest.fixture
def severe():
    """Notifications of warning severity or worse shown during the test, with their
    message (the random-weights warning is expected and left out)."""
    seen: list[str] = []

    def grab(n):
        if n.severity >= NotificationSeverity.WARNING and "RANDOM WEIGHTS" not in str(n.message):
            seen.append(f"{n.severity}: {n.message}")

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)


class _Either(QObject):
    """``fired`` on a run's first progress event or at its end, whichever is first."""

    fired = Signal()

    def __init__(self, jobs):
        super().__init__()
        jobs.progressed.connect(self.fired)
        jobs.finished.connect(self.fired)


def _set_upsampler(widget, name: str) -> None:
    widget.upsampler_combo.setCurrentText(name)
    if name == "featup-jbu":  # no published checkpoint offline: its random weights
        combo = widget.upsampler_weights_combo
        combo.setCurrentIndex(combo.findData("random"))


def _images(viewer):
    rng = np.random.default_rng(0)
    for name, shape in (("a", (42, 56, 3)), ("b", (56, 42, 3))):
        viewer.add_image(rng.integers(0, 255, shape, dtype=np.uint8), name=name)


def _idle(widget) -> None:
    assert not widget.jobs.running and widget.jobs._worker is None
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.jobs.bar is None


def test_hurried_use_leaves_no_stuck_state(qtbot, viewer_widget, severe):
    viewer, widget = viewer_widget
    _images(viewer)
    rng = np.random.default_rng(15)
    either = _Either(widget.jobs)
    tally = dict.fromkeys(["done", "cancelled", "refused", "switched", "upsampler"], 0)
    for _ in range(ROUNDS):
        layer, upsampler = widget.image_combo.currentText(), widget.upsampler_combo.currentText()
        with qtbot.waitSignal(widget.run_finished, timeout=RUN_TIMEOUT_MS) as finished:
            widget.run_button.click()
            if rng.uniform() < 0.5:  # act at once, or once the worker is computing
                with qtbot.waitSignal(either.fired, timeout=RUN_TIMEOUT_MS):
                    pass
            if not widget.jobs.running:
                continue  # it ended before the first event (an error shows below)
            # mid-run: the run's finished slot cannot run before control returns to Qt
            assert not widget.run_button.isEnabled()
            for action in rng.permutation(["again", "switch", "upsampler", "cancel"]):
                if rng.uniform() < 0.5:
                    continue
                if action == "again":
                    assert widget.run() is False
                    tally["refused"] += 1
                elif action == "switch":
                    widget.set_image("b" if layer == "a" else "a")
                    tally["switched"] += 1
                elif action == "upsampler":
                    choices = [u for u in UPSAMPLERS if u != upsampler]
                    _set_upsampler(widget, str(rng.choice(choices)))
                    tally["upsampler"] += 1  # (starts a warm-up beside the run)
                elif rng.uniform() < 0.5:  # cancel in one round of four
                    widget.cancel_button.click()
        status = finished.args[0]
        tally[status] += 1
        assert status in ("done", "cancelled"), (status, widget.last_error)
        _idle(widget)
        if status == "done":  # the results are those of the run's own settings
            full = viewer.layers[f"{layer} PCA {upsampler}"]
            assert full.metadata["napari_featup"]["upsampler"] == upsampler
            assert full.data.shape[:2] == viewer.layers[layer].data.shape[:2]
        assert severe == [], severe
    assert tally["done"] > 0 and tally["cancelled"] > 0 and tally["switched"] > 0, tally
    assert tally["refused"] > 0 and tally["upsampler"] > 0, tally
    # every run's layers are there once: "<image> PCA <upsampler>" replaced, not doubled
    names = [lyr.name for lyr in viewer.layers]
    assert len(names) == len(set(names))


def test_closing_the_viewer_mid_run_leaves_no_worker(qtbot, viewer_widget, severe):
    viewer, widget = viewer_widget
    _images(viewer)
    warm = widget.warm_up
    with qtbot.waitSignal(widget.jobs.progressed, timeout=RUN_TIMEOUT_MS):
        widget.run_button.click()
    _set_upsampler(widget, "featup-jbu")  # a warm-up beside the run
    worker = widget.jobs._worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=RUN_TIMEOUT_MS):
        viewer.close()  # closes the dock: its run is cancelled, its warm-up stopped
    assert QThreadPool.globalInstance().waitForDone(RUN_TIMEOUT_MS)
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert warm._thread is None or not warm._thread.is_alive()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("featup")]
    assert severe == [], severe
