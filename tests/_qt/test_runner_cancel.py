"""Cancel reaches inside a long step of a run (an attention upsampler's encoding): the
controller's stop flag, not only napari's abort check between steps."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_featup._qt import runner  # noqa: E402
from napari_featup.progress import Progress, check_cancelled  # noqa: E402
from napari_featup.session.run import RunOutput  # noqa: E402

STEP_S = 120.0  # the fake step's length: far beyond the wait below


def test_cancel_stops_a_step_that_never_yields(qtbot, monkeypatch):
    started = threading.Event()

    def iter_run(request):
        out = RunOutput()
        try:
            yield Progress(0, 1, "encoding the image", stage="upsample")
            started.set()
            t0 = time.monotonic()
            while time.monotonic() - t0 < STEP_S:  # one step: no yield in here
                check_cancelled()
                time.sleep(0.002)
        except Exception as exc:  # as iter_run does: errors are returned
            out.error = exc
        return out

    monkeypatch.setattr(runner, "iter_run", iter_run)
    jobs = runner.JobController()
    with qtbot.waitSignal(jobs.finished, timeout=10_000) as done:
        assert jobs.start(None)
        qtbot.waitUntil(started.is_set, timeout=5_000)
        t0 = time.monotonic()
        jobs.cancel()
    assert done.args[0] == "cancelled" and done.args[1] is None
    assert time.monotonic() - t0 < 5.0
