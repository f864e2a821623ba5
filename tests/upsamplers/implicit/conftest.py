"""Fixtures of the implicit upsampler's tests: tiny images and a random-weight backbone
(no pretrained weights in tests), on one thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.upsamplers.implicit import fit_implicit


@pytest.fixture(scope="module")
def tiny() -> dict:
    """A fit small enough for tests: 6 views, 3 steps of 2."""
    return dict(views=6, pca_views=6, steps=3, batch=2, view_batch=6)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors on a busy 2-core machine run several times faster on one thread
    (no waiting on a descheduled OpenMP worker)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bb():
    return nf.load_backbone("dinov2", weights="random", device="cpu")


@pytest.fixture(scope="module")
def image():
    """A 30 x 44 RGB image (not a multiple of the 14 px stride, not square)."""
    rng = np.random.default_rng(1)
    img = np.zeros((30, 44, 3), np.uint8)
    img[:, :20] = (220, 30, 30)
    img[10:, 20:] = (20, 40, 230)
    return img + rng.integers(0, 25, img.shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def fitted(bb, image, tiny):
    return fit_implicit(image, bb, seed=3, **tiny)
