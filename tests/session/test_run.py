"""The run generator the widget's worker drives (no Qt)."""

from __future__ import annotations

import numpy as np

from napari_featup.session.run import RunRequest


def test_iter_run_progress_and_planes(stack_run):
    data, out, events = stack_run
    assert out.error is None
    assert sorted(out.results) == [(0,), (2,)]
    steps = [e.step for e in events]
    assert steps == sorted(steps) and events[-1].total >= steps[-1]
    assert any("norms" in e.message for e in events)
    for low, full in out.colours.values():
        assert low.dtype == np.uint8 and low.shape == (3, 4, 3)
        assert full.shape == (42, 56, 3)


def test_iter_run_returns_errors_instead_of_raising(run_to_end):
    req = RunRequest(
        np.zeros((8, 8), np.uint8), [()], dict(backbone="dinov2", weights="random", device="cpu")
    )
    out, _ = run_to_end(req)
    assert out.error is not None and "needs at least 14 x 14" in str(out.error)
