"""Run :func:`napari_featup.session.run.iter_run` in a napari ``thread_worker``, one at
a time.

The controller owns the worker, a progress bar in napari's activity dock and the
cancel request; progress events (:class:`~napari_featup.progress.Progress`) and
results reach the widget on the GUI thread, through Qt signals.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Callable

from napari.qt.threading import create_worker
from napari.utils import progress
from qtpy.QtCore import QObject, Signal

from ..progress import Cancelled, Progress, cancellable
from ..session.run import RunOutput, RunRequest, iter_run, progress_text
from ..session.warmup import iter_warm_up

#: resolution of napari's progress bar: events carry fractions, the bar counts ticks
BAR_TICKS = 1000


def _iter_run(request: RunRequest, stop: threading.Event):
    """iter_run, whose long steps (an attention upsampler's encoding) stop at ``stop``
    too, not only between steps (napari's worker checks its abort flag there)."""
    return (yield from cancellable(iter_run(request), stop.is_set))


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
        self._stop = threading.Event()
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
        self._stop = threading.Event()
        self._on_done = on_done
        self._pbar = progress(total=BAR_TICKS, desc="FeatUp: starting")
        # The worker only iterates the generator; every Qt object is touched in the
        # slots below, which Qt runs on the GUI thread (never worker.run()).
        worker = create_worker(_iter_run, request, self._stop, _start_thread=False)
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
            self._stop.set()
            self._worker.quit()

    def shut_down(self) -> None:
        """Cancel for good (the dock is going): close the bar now and drop the callback,
        so nothing of the closing viewer is kept alive until the worker ends."""
        self.cancel()
        self._on_done = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

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
        stopped = out is None or out.error is None or isinstance(out.error, Cancelled)
        if self._cancelled and stopped:
            status, out = "cancelled", None
        elif out is None:
            status = "cancelled"
        else:
            status = "error" if out.error is not None else "done"
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(status, out)
        self.finished.emit(status, out)


#: warm-up threads alive, with their stop events (see _stop_warm_ups)
_LIVE: dict[threading.Thread, threading.Event] = {}


@atexit.register
def _stop_warm_ups(wait_s: float = 30.0) -> None:
    """Stop and join warm-ups still running when Python exits: a daemon thread left
    inside torch when the interpreter ends aborts the process ("terminate called
    without an active exception")."""
    for thread, stop in list(_LIVE.items()):
        stop.set()
        thread.join(wait_s)


class WarmUp(QObject):
    """Runs :func:`~napari_featup.session.warmup.iter_warm_up` in a Python thread
    (never on the GUI thread), one at a time: a request made while one runs is kept
    and started after it (the latest settings win). ``finished(result)`` arrives on
    the GUI thread (a queued signal).

    Not a napari thread worker: those share Qt's global thread pool (as many threads
    as cores), which Qt's own image scaling also waits on; a warm-up there plus a run
    can leave the GUI thread waiting for a pool thread that waits for it.
    """

    finished = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread: threading.Thread | None = None
        self._pending: dict | None = None
        self._stop = threading.Event()
        self._done: set[str] = set()
        self.result: dict | None = None
        self._delivered.connect(self._on_finished)

    _delivered = Signal(object)

    @property
    def running(self) -> bool:
        """Whether a warm-up is in progress."""
        return self._thread is not None

    def request(self, extract: dict) -> None:
        """Warm up for runs with ``extract`` (once per distinct setting)."""
        key = repr(sorted(extract.items()))
        if key in self._done:
            return
        if self._thread is not None:
            self._pending = extract
            return
        self._done.add(key)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._work, args=(extract,), name="featup-warm-up", daemon=True
        )
        _LIVE[self._thread] = self._stop
        self._thread.start()

    def _work(self, extract: dict) -> None:
        gen = cancellable(iter_warm_up(extract), self._stop.is_set)
        result: dict = {}
        try:
            while True:
                next(gen)
                if self._stop.is_set():
                    result = {"stopped": True}
                    break
        except StopIteration as stop:
            result = stop.value or {}
        except Cancelled:  # stopped inside a step
            result = {"stopped": True}
        except Exception as exc:  # noqa: BLE001 - a warm-up failure only costs time later
            result = {"error": repr(exc)}
        finally:
            gen.close()  # releases the warm-up lock when stopped early
            _LIVE.pop(threading.current_thread(), None)
        if self._stop.is_set():
            return  # stopped by quit() or at exit: the dock (or Qt) may be gone
        with contextlib.suppress(RuntimeError):  # the dock was deleted meanwhile
            self._delivered.emit(result)

    def quit(self, wait_s: float = 30.0) -> None:
        """Stop at the next step and wait for it (the dock is closing)."""
        self._pending = None
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(wait_s)

    def _on_finished(self, result: dict) -> None:
        self._thread = None
        self.result = result
        self.finished.emit(result)
        pending, self._pending = self._pending, None
        if pending is not None and not self._stop.is_set():
            self.request(pending)
