"""Run :func:`napari_featup.jobs.iter_run` in a napari ``thread_worker``, one at a time.

The controller owns the worker, a progress bar in napari's activity dock and the
cancel request; results reach the widget on the GUI thread through ``finished``.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import QObject, Signal

from ..jobs import RunOutput, RunRequest, iter_run
from ..pipeline import Progress


class JobController(QObject):
    """Starts at most one run; ``finished(status, output)`` with status ``"done"``,
    ``"error"`` or ``"cancelled"`` (output None), always on the GUI thread."""

    started = Signal()
    progressed = Signal(int, int, str)
    finished = Signal(str, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._worker = None
        self._pbar = None
        self._output: RunOutput | None = None
        self._cancelled = False
        self._on_done: Callable[[str, RunOutput | None], None] | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(
        self, request: RunRequest, on_done: Callable[[str, RunOutput | None], None] | None = None
    ) -> bool:
        """Start a run; False (and nothing started) when one is already going."""
        if self.running:
            return False
        self._output = None
        self._cancelled = False
        self._on_done = on_done
        total = 6 * max(1, len(request.planes)) + 1
        self._pbar = progress(total=total, desc="FeatUp: starting")
        worker = create_worker(iter_run, request, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        self.started.emit()
        return True

    def cancel(self) -> None:
        """Ask the run to stop at its next step (the viewer is left unchanged)."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def _on_yielded(self, ev: Progress) -> None:
        # A local reference: updating the bar can process events, and the run's
        # `finished` handler (which closes the bar) may run in between.
        pbar = self._pbar
        if pbar is not None:
            pbar.total = ev.total
            pbar.n = ev.step
            pbar.set_description(f"FeatUp: {ev.message}")  # also redraws n/total
        if self._worker is not None:  # not after the run has finished (re-entrancy)
            self.progressed.emit(ev.step, ev.total, ev.message)

    def _on_returned(self, out: RunOutput) -> None:
        self._output = out

    def _on_aborted(self) -> None:
        self._cancelled = True

    def _on_errored(self, exc: BaseException) -> None:
        # iter_run returns its errors; this only catches bugs in the worker machinery.
        self._output = RunOutput(error=exc)

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._worker = None
        out = self._output
        if self._cancelled and (out is None or out.error is None):
            status, out = "cancelled", None
        elif out is None:
            status = "cancelled"
        else:
            status = "error" if out.error is not None else "done"
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(status, out)
        self.finished.emit(status, out)
