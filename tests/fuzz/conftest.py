"""Hypothesis profiles for the fuzz suite and the property every target shares.

``ci`` (the default) is small and derandomised, so CI runs the same examples every
time in a few seconds; ``big`` is the budget behind the figures in the issue note:

    HYPOTHESIS_PROFILE=big pytest tests/fuzz --hypothesis-show-statistics
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.control import currently_in_test_context

from napari_featup.errors import FeatUpError

_COMMON = dict(
    deadline=None,
    # module-scoped fixtures (a saved feature file, a checkpoint) are shared on purpose
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("ci", max_examples=60, derandomize=True, database=None, **_COMMON)
settings.register_profile("big", max_examples=3000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _event(name: str) -> None:
    """Count an outcome for ``--hypothesis-show-statistics`` (regression tests run outside
    Hypothesis, where there is nothing to count)."""
    if currently_in_test_context():
        event(name)


def _outcome(
    fn: Callable[..., Any], *args: Any, allowed: tuple[type[BaseException], ...] = (), **kwargs: Any
) -> tuple[Any, BaseException | None]:
    """``(result, None)`` if ``fn`` returns, ``(None, error)`` if it raises a package
    error (or one of the built-in errors in ``allowed`` that its API documents) that
    carries a message. Any other exception propagates, which fails the example: that
    is the bug the fuzzing looks for."""
    try:
        result = fn(*args, **kwargs)
    except (FeatUpError, *allowed) as exc:
        assert str(exc).strip(), f"{type(exc).__name__} raised without a message"
        _event(f"raised {type(exc).__name__}")
        return None, exc
    _event("returned")
    return result, None


@pytest.fixture(scope="session")
def outcome() -> Callable[..., tuple[Any, BaseException | None]]:
    """The property shared by the fuzz targets (see :func:`_outcome`)."""
    return _outcome
