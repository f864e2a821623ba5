"""One progress type for all long work, and the loop that drives it.

Long work (extraction, per-image fits, training, tiled backbones) is a generator that
yields :class:`Progress` events and returns its result; a consumer that stops
iterating (``gen.close()``) cancels it at that point. :func:`drive` runs such a
generator for scripts and the command line; napari runs it in a ``thread_worker``.
:func:`relay` runs a nested generator inside a parent's range, so one bar moves
smoothly through every stage.

A step that takes long without yielding (an attention upsampler encoding a whole image)
calls :func:`check_cancelled` in its loops: inside :func:`drive` or :func:`cancellable`
it raises :class:`Cancelled` as soon as the consumer asks, instead of after the step.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple, TypeVar

from .errors import FeatUpError

T = TypeVar("T")


class Cancelled(FeatUpError):
    """Raised by :func:`drive` (and so by ``extract_features``) when ``should_cancel``
    returned True; the work stopped at the event named in the message."""


#: what :func:`check_cancelled` asks, set by :func:`drive` and :func:`cancellable`
_SHOULD_CANCEL: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "napari_featup_should_cancel", default=None
)


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the run this code is part of was asked to stop.

    For loops inside one long step; outside :func:`drive` and :func:`cancellable` it
    does nothing.

    Raises
    ------
    Cancelled
        The consumer's ``should_cancel`` returned True.
    """
    should_cancel = _SHOULD_CANCEL.get()
    if should_cancel is not None and should_cancel():
        raise Cancelled("cancelled inside a step")


def cancellable(gen: Generator[Progress, None, T], should_cancel: Callable[[], bool]):
    """``gen``, with :func:`check_cancelled` inside its steps answering ``should_cancel``
    (for consumers other than :func:`drive`, e.g. napari's thread worker).

    The answer is set only while a step runs, so a generator left at a yield (napari's
    worker abandons it on abort) leaves nothing behind in a pooled thread.

    Parameters
    ----------
    gen : generator of Progress
        The work.
    should_cancel : callable
        Returns True once the work should stop; may be called from the work's thread.

    Yields
    ------
    Progress
        ``gen``'s events; its return value is returned.
    """
    try:
        while True:
            token = _SHOULD_CANCEL.set(should_cancel)
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            finally:
                _SHOULD_CANCEL.reset(token)
            yield ev
    finally:
        gen.close()  # closing this closes the work at the same point


class Progress(NamedTuple):
    """One progress event (immutable): ``done`` of ``total`` units, with what is being done.

    Parameters
    ----------
    done : float
        Units done; fractional when a nested stage is relayed into a parent range.
    total : float
        Units in all.
    message : str
        What is being done, for people.
    stage : str
        A short machine-readable tag (``"backbone"``, ``"fit"``, ``"tile"``, ...).
    loss : float or None
        Set by stages that optimise something (NaN before the first value).
    """

    done: float
    total: float
    message: str = ""
    stage: str = ""
    loss: float | None = None

    @property
    def step(self) -> float:
        """``done`` (the name the first releases used)."""
        return self.done

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (0 when total is 0)."""
        return min(1.0, max(0.0, self.done / self.total)) if self.total else 0.0

    def __str__(self) -> str:
        loss = "" if self.loss is None or math.isnan(self.loss) else f" (loss {self.loss:.4g})"
        return f"step {self.done:g}/{self.total:g}: {self.message}{loss}"


def drive(
    gen: Generator[Progress, None, T],
    on_event: Callable[[Progress], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> T:
    """Run a progress generator to its return value.

    Parameters
    ----------
    gen : generator of Progress
        The work, e.g. :func:`~napari_featup.pipeline.iter_extract`.
    on_event : callable, optional
        Called with every :class:`Progress`.
    should_cancel : callable, optional
        Polled after each event; when it returns True the generator is closed (its work
        stops there).

    Returns
    -------
    object
        The generator's return value.

    Raises
    ------
    Cancelled
        ``should_cancel`` returned True; the message names the last event (or says the
        work stopped inside a step, see :func:`check_cancelled`).
    """
    # an inner drive without its own should_cancel keeps the outer one
    steps = gen if should_cancel is None else cancellable(gen, should_cancel)
    while True:
        try:
            ev = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(ev)
        if should_cancel is not None and should_cancel():
            steps.close()
            raise Cancelled(f"cancelled after {ev}")


def relay(
    gen: Iterator[Progress],
    start: float,
    stop: float,
    total: float,
    *,
    prefix: str = "",
    stage: str | None = None,
) -> Generator[Progress, None, T]:
    """Yield a nested generator's events mapped into ``[start, stop]`` of a parent range.

    Use as ``value = yield from relay(child, start, stop, total)``: the parent's bar
    moves smoothly through the child's work. Closing the parent closes ``gen``.

    Parameters
    ----------
    gen : iterator of Progress
        The child's events.
    start, stop : float
        The part of the parent's range the child fills.
    total : float
        The parent's total.
    prefix : str
        Put before each of the child's messages.
    stage : str, optional
        Replaces the child's stage when given.

    Returns
    -------
    object
        ``gen``'s return value.
    """
    span = stop - start
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                return done.value
            yield ev._replace(
                done=start + span * ev.fraction,
                total=total,
                message=prefix + ev.message,
                stage=ev.stage if stage is None else stage,
            )
    finally:
        close = getattr(gen, "close", None)  # plain iterators have nothing to close
        if close is not None:
            close()


__all__ = ["Cancelled", "Progress", "drive", "relay"]
