"""napari's reader and writer for feature files (no viewer)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup._reader import get_reader
from napari_featup._writer import write_layers


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
