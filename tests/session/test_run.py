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


def test_progress_relays_each_plane_into_its_range(monkeypatch, run_to_end):
    """A plane's extraction (here: its real events plus ten fit steps with a loss) moves
    the run's bar through that plane's share, in order."""
    from napari_featup import pipeline
    from napari_featup.progress import Progress, drive
    from napari_featup.session import run

    def fitting(image, **kwargs):
        res = drive(pipeline.iter_extract(image, **kwargs))
        for i in range(1, 11):
            yield Progress(i, 10, f"fit step {i}", stage="fit", loss=1.0 / i)
        return res

    monkeypatch.setattr(run, "iter_extract", fitting)
    data = np.random.default_rng(5).integers(0, 255, (2, 28, 42), dtype=np.uint8)
    req = RunRequest(data, [(0,), (1,)], dict(backbone="dinov2", weights="random", device="cpu"))
    out, events = run_to_end(req)
    assert out.error is None and sorted(out.results) == [(0,), (1,)]
    assert all(isinstance(e, Progress) and e.total == 2 * run.PLANE_UNITS + 1 for e in events)
    done = [e.done for e in events]
    assert done == sorted(done) and events[-1].fraction == 1.0
    for n, idx in enumerate([(0,), (1,)]):
        fit = [e for e in events if e.stage == "fit" and e.message.startswith(f"plane {idx}")]
        start = n * run.EXTRACT_UNITS
        expected = [start + run.EXTRACT_UNITS * i / 10 for i in range(1, 11)]
        np.testing.assert_allclose([e.done for e in fit], expected)
        assert fit[-1].loss == 0.1


def test_progress_text():
    from napari_featup.progress import Progress
    from napari_featup.session.run import progress_text

    assert progress_text(Progress(5, 10, "fit", loss=0.25)) == "50%: fit (loss 0.25)"
    assert progress_text(Progress(1, 4, "backbone", loss=float("nan"))) == "25%: backbone"
