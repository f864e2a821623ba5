import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _fixtures_dir() -> Path:
    env = os.environ.get("NAPARI_FEATUP_FIXTURES")
    if env:
        return Path(env)
    # The repository sits beside shared/ (in the workspace and in CI's clone).
    return Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    d = _fixtures_dir()
    if not d.is_dir():
        pytest.skip(f"shared fixtures not found at {d} (set NAPARI_FEATUP_FIXTURES)")
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def rgb_image(rng):
    """A small uint8 RGB photo-like image with two regions."""
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (200, 40, 40)
    img[:, 32:] = (30, 60, 220)
    img = img + rng.integers(0, 20, img.shape, dtype=np.uint8)
    return img
