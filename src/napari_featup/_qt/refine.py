"""Exact text maps in the background, one plane at a time (GUI side of
:mod:`napari_featup.text.refine`).

The Text row shows the fast maps at once, then asks the :class:`Refiner` for the
exact ones. Like :class:`~napari_featup._qt.runner.WarmUp` it works in a Python
thread, not in napari's thread pool: a refinement takes seconds at 1024² and the pool
(as many threads as cores) is shared with Qt's own image scaling and the text
encoding. One refinement runs at a time; a request made meanwhile waits, and only the
latest waits. :meth:`Refiner.cancel` marks the running one stale (its maps are
dropped when it ends: a projection is not interrupted) and forgets the waiting one.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..text.refine import Refinement, exact_maps
from .runner import _LIVE


class _Job:
    def __init__(self, refinement: Refinement):
        self.refinement = refinement
        self.cancelled = threading.Event()


class Refiner(QObject):
    """``finished(refinement, maps, error)`` on the GUI thread when a refinement that
    was not cancelled ends (``maps`` None on error); ``dropped(refinement)`` for one
    that was cancelled while it ran."""

    finished = Signal(object, object, object)
    dropped = Signal(object)
    _delivered = Signal(object, object, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._running: _Job | None = None
        self._pending: Refinement | None = None
        self._closed = False
        self._delivered.connect(self._on_delivered)

    @property
    def busy(self) -> bool:
        """Whether a refinement runs or waits."""
        return self._running is not None or self._pending is not None

    def request(self, refinement: Refinement) -> None:
        """Compute ``refinement`` after the running one (at once when idle); a running
        refinement of another query is cancelled, a waiting one replaced."""
        if self._closed:
            return
        job = self._running
        if job is None:
            self._start(refinement)
            return
        if job.refinement.text is not refinement.text:
            job.cancelled.set()
        self._pending = refinement

    def cancel(self) -> None:
        """Drop the waiting refinement and the running one's maps."""
        self._pending = None
        if self._running is not None:
            self._running.cancelled.set()

    def close(self) -> None:
        """Cancel, and take no more requests (the widget is closing)."""
        self._closed = True
        self.cancel()

    def _start(self, refinement: Refinement) -> None:
        job = self._running = _Job(refinement)
        thread = threading.Thread(
            target=self._work, args=(job,), name="featup-text-refine", daemon=True
        )
        _LIVE[thread] = job.cancelled  # joined at exit, as the warm-up is
        thread.start()

    def _work(self, job: _Job) -> None:
        maps: Any = None
        error: BaseException | None = None
        try:
            if not job.cancelled.is_set():
                maps = exact_maps(job.refinement)
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            error = exc
        finally:
            _LIVE.pop(threading.current_thread(), None)
        with contextlib.suppress(RuntimeError):  # the widget was deleted meanwhile
            self._delivered.emit(job, maps, error)

    def _on_delivered(self, job: _Job, maps: Any, error: BaseException | None) -> None:
        self._running = None
        pending, self._pending = self._pending, None
        if pending is not None and not self._closed:
            self._start(pending)  # first: a listener's request then waits behind it
        if job.cancelled.is_set() or self._closed:
            self.dropped.emit(job.refinement)
        else:
            self.finished.emit(job.refinement, maps, error)
