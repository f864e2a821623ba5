"""Qt-free layer data: placement, stacks of planes, similarity, reader and writer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup._reader import get_reader
from napari_featup._writer import write_layers
from napari_featup.jobs import RunRequest, iter_run
from napari_featup.layers import FeatureStack, PlaneGeometry, grid_transform


def run_to_end(request: RunRequest):
    gen = iter_run(request)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture(scope="module")
def stack_run():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (3, 42, 56), dtype=np.uint16)
    data[:, :, 28:] += 20000  # two regions
    req = RunRequest(
        data,
        [(0,), (2,)],
        dict(backbone="dinov2", upsampler="bilinear", weights="random", device="cpu"),
    )
    out, events = run_to_end(req)
    return data, out, events


def test_grid_transform_places_cell_centres():
    s, t = grid_transform(14, [5.0, 2.0, 0.5], [1.0, 10.0, -3.0])
    assert s == [5.0, 28.0, 7.0]
    assert t == [1.0, 10.0 + 6.5 * 2.0, -3.0 + 6.5 * 0.5]
    # cell (i, j) centre in world = pixel (i*14 + 6.5) of the image in world
    i, j = 3, 4
    assert t[-2] + i * s[-2] == pytest.approx(10.0 + (i * 14 + 6.5) * 2.0)
    assert t[-1] + j * s[-1] == pytest.approx(-3.0 + (j * 14 + 6.5) * 0.5)
    with pytest.raises(ValueError, match="same length"):
        grid_transform(14, [1.0], [0.0])


def test_iter_run_progress_and_planes(stack_run):
    data, out, events = stack_run
    assert out.error is None
    assert sorted(out.results) == [(0,), (2,)]
    steps = [e.step for e in events]
    assert steps == sorted(steps) and events[-1].total >= steps[-1]
    assert any("norms" in e.message for e in events)
    for idx, (low, full) in out.colours.items():
        assert low.dtype == np.uint8 and low.shape == (3, 4, 3)
        assert full.shape == (42, 56, 3)


def test_iter_run_returns_errors_instead_of_raising():
    req = RunRequest(
        np.zeros((8, 8), np.uint8), [()], dict(backbone="dinov2", weights="random", device="cpu")
    )
    out, _ = run_to_end(req)
    assert out.error is not None and "needs at least 14 x 14" in str(out.error)


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


def test_writer_reader_roundtrip(tmp_path):
    pca = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    sim = np.linspace(-1, 1, 600, dtype=np.float32).reshape(20, 30)
    layers = [
        (
            pca,
            {
                "name": "x PCA bilinear",
                "rgb": True,
                "scale": (2.0, 2.0),
                "translate": (1.0, 0.0),
                "metadata": {"napari_featup": {"backbone": "dinov2"}},
            },
            "image",
        ),
        (sim, {"name": "x similarity", "scale": (2.0, 2.0), "colormap": "inferno"}, "image"),
    ]
    path = tmp_path / "layers.zarr"
    assert write_layers(str(path), [layers[1]]) == [str(path)]
    # napari's Save dialog has asked by now: the writer replaces the file
    assert write_layers(str(path), layers) == [str(path)]
    reader = get_reader(str(path))
    assert reader is not None
    back = reader(str(path))
    assert [b[1]["name"] for b in back] == ["x PCA bilinear", "x similarity"]
    np.testing.assert_array_equal(back[0][0], pca)
    np.testing.assert_array_equal(back[1][0], sim)
    assert back[0][1]["scale"] == [2.0, 2.0] and back[0][1]["translate"] == [1.0, 0.0]
    assert back[0][1]["metadata"]["napari_featup"]["backbone"] == "dinov2"


def test_reader_ignores_foreign_files(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    assert get_reader(str(tmp_path / "plain.npy")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path / "image.png")) is None


def test_samples_are_bundled():
    from napari_featup import _sample_data as sd

    for fn, shape in [
        (sd.astronaut, (512, 512, 3)),
        (sd.immunohistochemistry, (512, 512, 3)),
        (sd.cell, (660, 550)),
    ]:
        ((data, kwargs),) = fn()
        assert data.shape == shape and kwargs["name"]


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_reader_opens_library_feature_files(tmp_path, suffix):
    """Files from napari_featup.io.save_features (CLI, library) open as PCA layers."""
    from napari_featup import extract_features
    from napari_featup.io import save_features

    img = np.random.default_rng(4).integers(0, 255, (28, 42, 3), dtype=np.uint8)
    res = extract_features(img, "dinov2", "bilinear", weights="random", device="cpu")
    path = save_features(tmp_path / f"feats{suffix}", res)
    reader = get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    kinds = {kw["name"]: data.shape for data, kw, _ in layers}
    if suffix == ".npz":  # low-res and full-res features both stored
        assert kinds == {"feats PCA low-res": (2, 3, 3), "feats PCA bilinear": (28, 42, 3)}
        low = next(kw for _, kw, _ in layers if kw["name"].endswith("low-res"))
        assert low["scale"] == [14.0, 14.0] and low["translate"] == [6.5, 6.5]
    else:  # .npy holds the full-res features only
        assert kinds == {"feats PCA bilinear": (28, 42, 3)}
