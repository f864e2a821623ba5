"""A FeatureStack of planes: PCA layers, similarity and masks (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup.session.geometry import PlaneGeometry
from napari_featup.session.stack import FeatureStack


def test_stack_similarity_and_mask(stack_run):
    data, out, _ = stack_run
    geo = PlaneGeometry((3,), (42, 56), [2.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    stack = FeatureStack("img", geo, {})
    stack.add_planes(out.results, out.pca, out.colours)
    assert stack.pca_lowres.shape == (3, 3, 4, 3) and stack.pca_full.shape == (3, 42, 56, 3)
    assert stack.pca_full[1].max() == 0  # plane 1 not computed
    ignored = stack.set_query([(0, 10, 12), (1, 5, 5)])
    assert ignored == [[1.0, 5.0, 5.0]]  # no features on plane 1
    sim = stack.update_similarity((0,)).copy()  # else a view of the stack's array
    assert np.unravel_index(np.argmax(sim), sim.shape) == (10, 12)
    assert sim[10, 12] == pytest.approx(1.0, abs=1e-4)
    assert stack.update_similarity((1,)) is None
    # the query also scores the other computed plane, lazily
    assert (2,) in stack.stale_similarity
    other = stack.update_similarity((2,))
    assert other.shape == (42, 56) and np.abs(other).max() > 0
    # a negative point lowers its own similarity
    stack.set_query([(0, 10, 12)], [(0, 30, 14)])
    sim_neg = stack.update_similarity((0,))
    assert sim_neg[30, 14] < sim[30, 14] - 0.05
    stack.set_query([(0, 10, 12)])
    mask = stack.mask(0.5)  # updates the stale planes itself
    assert mask[0, 10, 12] == 1 and mask[1].max() == 0
