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


def test_stack_arrays_take_memory_per_computed_plane(stack_run):
    """A stack's layer arrays have the whole stack's shape but hold only the planes
    computed (issue 17: they were allocated for every slice up front)."""
    data, out, _ = stack_run
    leading = (200,)  # a long stack, two slices computed
    geo = PlaneGeometry(leading, (42, 56), [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    stack = FeatureStack("img", geo, {})
    stack.add_planes(out.results, out.pca, out.colours)
    assert stack.pca_full.shape == (200, 42, 56, 3) and stack.similarity.shape == (200, 42, 56)
    assert stack.pca_full.stored_bytes == 2 * 42 * 56 * 3
    assert stack.pca_lowres.stored_bytes == 2 * 3 * 4 * 3
    assert stack.similarity.stored_bytes == 0  # nothing until a query
    assert stack.pca_full[7].max() == 0 and stack.pca_full[2].max() > 0
    stack.set_query([(0, 10, 12)])
    stack.update_similarity((2,))
    assert stack.similarity.stored_bytes == 42 * 56 * 4


def test_lowres_layer_is_cut_to_the_image_extent(run_to_end):
    """A 44 x 50 px image is 4 x 4 cells of 14 px (56 px): the grid layer stops at the
    image's edge, on 2 px steps (gcd(14, 44) = gcd(14, 50) = 2)."""
    from napari_featup.session.run import RunRequest

    img = np.random.default_rng(2).integers(0, 255, (44, 50, 3), dtype=np.uint8)
    opts = dict(backbone="dinov2", upsampler="bilinear", weights="random", device="cpu")
    out, _ = run_to_end(RunRequest(img, [()], opts, rgb=True))
    geo = PlaneGeometry((), (44, 50), [2.0, 3.0], [10.0, -5.0])
    stack = FeatureStack("img", geo, {})
    stack.add_planes(out.results, out.pca, out.colours)
    data, kwargs, _ = stack.layer_data()[0]
    assert data.shape == (22, 25, 3) and stack.lowres_step == (2, 2)
    scale, translate = np.array(kwargs["scale"]), np.array(kwargs["translate"])
    first_edge = translate - scale / 2
    last_edge = translate + (np.array(data.shape[:2]) - 0.5) * scale
    np.testing.assert_allclose(first_edge, [10.0 - 1.0, -5.0 - 1.5])  # the image's edges
    np.testing.assert_allclose(last_edge, [10.0 + 43.5 * 2.0, -5.0 + 49.5 * 3.0])
    # each 2 px square shows its cell's colour; the metadata keeps the full grid
    low = out.colours[()][0]
    np.testing.assert_array_equal(data[::7, ::7], low[:, :4])
    assert stack.metadata["grid"] == [4, 4]
