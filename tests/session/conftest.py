"""A small stack run shared by the session tests (random weights, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup.progress import drive
from napari_featup.session.run import RunRequest, iter_run


def _run_to_end(request: RunRequest):
    events = []
    out = drive(iter_run(request), events.append)
    return out, events


@pytest.fixture(scope="session")
def run_to_end():
    """(request) -> (RunOutput, events): drive iter_run to its end."""
    return _run_to_end


@pytest.fixture(scope="session")
def stack_run():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (3, 42, 56), dtype=np.uint16)
    data[:, :, 28:] += 20000  # two regions
    req = RunRequest(
        data,
        [(0,), (2,)],
        dict(backbone="dinov2", upsampler="bilinear", weights="random", device="cpu"),
    )
    out, events = _run_to_end(req)
    return data, out, events
