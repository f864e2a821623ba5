"""Export of a stack's computed slices into one file, and reading it back (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup._reader import read_features
from napari_featup.errors import FeatureFileError
from napari_featup.io import load_arrays, load_feature_stack, load_features, save_features
from napari_featup.session.export import export_stack, feature_file_from_choice
from napari_featup.session.geometry import PlaneGeometry
from napari_featup.session.stack import FeatureStack


def test_export_writes_every_computed_slice(stack_run, tmp_path):
    data, out, _ = stack_run
    geo = PlaneGeometry((3,), (42, 56), [2.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    stack = FeatureStack("img", geo, {})
    stack.add_planes(out.results, out.pca, out.colours)
    stack.set_query([(0, 10, 12)])
    path = export_stack(tmp_path / "img.featup.npz", stack)
    arrays, meta = load_arrays(path)
    assert meta["plane_index"] == [[0], [2]] and meta["stack_shape"] == [3]
    assert arrays["lowres"].shape == (2, 384, 3, 4) and arrays["pca"].shape == (2, 42, 56, 3)
    assert arrays["similarity"].shape == (2, 42, 56)
    np.testing.assert_array_equal(arrays["pca"][1], np.asarray(stack.pca_full[2]))
    np.testing.assert_allclose(arrays["lowres"][0], out.results[(0,)].lowres)
    # read back: every slice in its place, the missing one empty
    layers = {kw["name"]: (d, kw) for d, kw, _ in read_features(str(path))}
    pca, kw = layers["img PCA bilinear"]
    assert pca.shape == (3, 42, 56, 3) and kw["scale"][0] == 2.0
    np.testing.assert_array_equal(pca[2], np.asarray(stack.pca_full[2]))
    assert np.asarray(pca[1]).max() == 0
    sim = layers["img similarity"][0]
    np.testing.assert_allclose(sim[0], stack.update_similarity((0,)))
    assert layers["img PCA low-res"][0].shape == (3, 3, 4, 3)


def test_dialog_picks_inside_a_zarr_store_mean_the_store(tmp_path):
    store = tmp_path / "a.featup.zarr"
    assert feature_file_from_choice(store / "zarr.json") == store
    assert feature_file_from_choice(tmp_path / "b.featup.npz") == tmp_path / "b.featup.npz"


def test_library_reads_a_stack_export_plane_by_plane(stack_run, tmp_path):
    _, out, _ = stack_run
    geo = PlaneGeometry((3,), (42, 56), [2.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    stack = FeatureStack("img", geo, {})
    stack.add_planes(out.results, out.pca, out.colours)
    path = export_stack(tmp_path / "img.featup.npz", stack)
    with pytest.raises(FeatureFileError, match="load_feature_stack"):
        load_features(path)  # one (C, h, w) result cannot hold two planes
    planes = load_feature_stack(path)
    assert list(planes) == [(0,), (2,)]
    for index, result in planes.items():
        np.testing.assert_array_equal(result.lowres, out.results[index].lowres)
        assert result.metadata["plane_index"] == list(index)
        assert result.pca is not None and result.pca.components.shape[1] == 384


def test_load_feature_stack_of_a_single_image_file(stack_run, tmp_path):
    _, out, _ = stack_run
    path = save_features(tmp_path / "one.featup.npz", out.results[(0,)])
    planes = load_feature_stack(path)
    assert list(planes) == [()]
    np.testing.assert_array_equal(planes[()].lowres, out.results[(0,)].lowres)
