"""Cancelling inside one long step: check_cancelled answers drive's and cancellable's
should_cancel, and nowhere else."""

from __future__ import annotations

import pytest

from napari_featup.progress import Cancelled, Progress, cancellable, check_cancelled, drive


def _long_step(polls: list, limit: int = 1000):
    """One event, then a step that only polls check_cancelled (as an encoder's loops do)."""
    yield Progress(0, 2, "start")
    for _ in range(limit):
        polls.append(1)
        check_cancelled()
    yield Progress(1, 2, "step done")
    return "finished"


def test_outside_a_run_it_does_nothing():
    check_cancelled()
    polls: list = []
    assert drive(_long_step(polls)) == "finished" and len(polls) == 1000


def test_drive_stops_inside_the_step():
    polls: list = []
    calls = iter(range(10**6))
    with pytest.raises(Cancelled, match="inside a step"):
        drive(_long_step(polls), should_cancel=lambda: next(calls) >= 3)
    # polled once after the first event, then inside the step until the 4th call
    assert len(polls) == 3
    check_cancelled()  # the scope ended with drive


def test_an_inner_drive_without_should_cancel_keeps_the_outer_one():
    polls: list = []

    def outer():
        yield Progress(0, 1, "outer")
        return drive(_long_step(polls))  # e.g. batch items driven inside a batch run

    stop = [False]
    gen = cancellable(outer(), lambda: stop[0])
    next(gen)
    stop[0] = True
    with pytest.raises(Cancelled):
        next(gen)
    assert len(polls) == 1


def test_cancellable_passes_events_and_the_return_value():
    polls: list = []
    gen = cancellable(_long_step(polls, limit=5), lambda: False)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    assert [e.message for e in events] == ["start", "step done"]
    assert stop.value.value == "finished"
    check_cancelled()  # reset after the generator ended


def test_an_abandoned_cancellable_leaves_nothing_set():
    """napari's worker stops iterating on abort without closing the generator: the
    thread (pooled, reused) must not keep the old run's answer."""
    polls: list = []
    gen = cancellable(_long_step(polls), lambda: True)
    next(gen)  # paused at a yield, then abandoned
    check_cancelled()  # nothing set between steps
    assert drive(_long_step(polls)) == "finished"
    gen.close()
