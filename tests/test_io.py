import numpy as np
import pytest

import napari_featup as nf
from napari_featup import io


@pytest.fixture(scope="module")
def result():
    img = (np.random.default_rng(0).random((30, 40)) * 60000).astype(np.uint16)
    res = nf.extract_features(img, "dino16", weights="random")
    res.fit_pca()
    return res


@pytest.mark.parametrize("ext", [".npz", ".zarr", ".tif", ".npy"])
def test_round_trip(tmp_path, result, ext):
    path = io.save_features(tmp_path / f"f{ext}", result)
    back = io.load_features(path)
    assert np.array_equal(back.highres, result.highres)
    if ext != ".npy":
        assert np.array_equal(back.lowres, result.lowres)
    assert back.metadata["backbone"] == "dino16" and back.metadata["random_weights"]
    assert np.allclose(back.pca.components, result.pca.components)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_other_tools_read_the_files(tmp_path, result):
    import tifffile
    import zarr

    io.save_features(tmp_path / "f.npz", result)
    assert np.load(tmp_path / "f.npz")["lowres"].shape == (384, 2, 3)
    io.save_features(tmp_path / "f.zarr", result)
    assert zarr.open_group(str(tmp_path / "f.zarr"), mode="r")["highres"].shape == (384, 30, 40)
    io.save_features(tmp_path / "f.tif", result)
    with tifffile.TiffFile(tmp_path / "f.tif") as tf:
        assert [s.shape for s in tf.series] == [(384, 2, 3), (384, 30, 40)]


@pytest.mark.parametrize("ext", [".npz", ".zarr", ".tif", ".npy"])
def test_no_overwrite_unless_asked(tmp_path, result, ext):
    path = tmp_path / f"f{ext}"
    io.save_features(path, result)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        io.save_features(path, result)
    io.save_features(path, result, overwrite=True)
    assert io.load_features(path).metadata["backbone"] == "dino16"


def test_failed_write_leaves_old_file_intact(tmp_path, result, monkeypatch):
    path = tmp_path / "f.npz"
    io.save_features(path, result)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_features(path, result, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]


def test_errors(tmp_path, result):
    with pytest.raises(io.FeatureFileError, match="use one of"):
        io.save_features(tmp_path / "f.png", result)
    with pytest.raises(io.FeatureFileError, match="does not exist"):
        io.save_features(tmp_path / "nope" / "f.npz", result)
    with pytest.raises(FileNotFoundError):
        io.load_features(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(io.FeatureFileError, match="not a readable"):
        io.load_features(bad)
    with pytest.raises(io.FeatureFileError, match="one array"):
        io.save_arrays(tmp_path / "x.npy", {"a": np.zeros(2), "b": np.zeros(2)})
