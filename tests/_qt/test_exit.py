"""Warm-ups still running when Python exits are stopped and joined by an atexit hook:
a daemon thread left inside torch at exit aborted the process ("terminate called
without an active exception", exit status 134, seen after a single widget test)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("napari")

from napari_featup._qt import runner  # noqa: E402


def test_exit_hook_stops_and_joins_a_running_warm_up(qtbot, monkeypatch):
    started, steps = threading.Event(), []

    def endless(extract):
        started.set()
        while True:  # a warm-up that never ends by itself
            steps.append(1)
            yield runner.Progress(len(steps), 10**9, "warming up")

    monkeypatch.setattr(runner, "iter_warm_up", endless)
    warm = runner.WarmUp()
    delivered = []
    warm.finished.connect(delivered.append)
    warm.request({"backbone": "dinov2"})
    assert started.wait(10)
    thread = warm._thread
    assert thread in runner._LIVE
    runner._stop_warm_ups(wait_s=10)
    assert not thread.is_alive() and thread not in runner._LIVE
    qtbot.wait(10)  # let a (wrongly) queued delivery arrive
    assert delivered == []  # a stopped warm-up touches no Qt object
