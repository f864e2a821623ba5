"""Run :func:`napari_featup.session.run.iter_run` in a napari ``thread_worker``, one at
a time.

The controller owns the worker, a progress bar in napari's activity dock and the
cancel request; progress events (:class:`~napari_featup.progress.Progress`) and
results reach the widget on the GUI thread, through Qt signals.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import QObject, Signal

from ..progress import Progress
from ..session.run import RunOutput, RunRequest, iter_run, progress_text

#: resolution of napari's progress bar: events carry fractions, the bar counts ticks
BAR_TICKS = 1000


class JobController(QObject):
    """Starts at most one run. ``progressed(event)`` carries each
    :class:`~napari_featup.progress.Progress`; ``finished(status, output)`` with status
    ``"done"``, ``"error"`` or ``"cancelled"`` (output None), always on the GUI thread."""

    started = Signal()
    progressed = Signal(object)
    finished = Signal(str, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._worker = None
        self._pbar = None
        self._output: RunOutput | None = None
        self._cancelled = False
        self._on_done: Callable[[str, RunOutput | None], None] | None = None

    @property
    def bar(self) -> progress | None:
        """napari's progress bar of the current run (None when idle)."""
        return self._pbar

    @property
    def running(self) -> bool:
        """Whether a run is in progress."""
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
        self._pbar = progress(total=BAR_TICKS, desc="FeatUp: starting")
        # The worker only iterates the generator; every Qt object is touched in the
        # slots below, which Qt runs on the GUI thread (never worker.run()).
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
        if self._worker is None:  # the run has finished (re-entrancy, see below)
            return
        # Listeners first: redrawing the bar processes Qt events, so later events (and
        # even `finished`) can be handled inside it; emitting after it would leave the
        # status line on this older event.
        self.progressed.emit(ev)
        pbar = self._pbar  # a local reference: `finished` may close the bar meanwhile
        if pbar is not None:
            pbar.n = round(ev.fraction * BAR_TICKS)
            pbar.set_description(f"FeatUp: {progress_text(ev)}")  # also redraws the bar

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
