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


def test_zarr_missing_chunk_raises_naming_it(tmp_path):
    out = tmp_path / "f.zarr"
    lowres = np.arange(2 * 600 * 3, dtype=np.float32).reshape(2, 600, 3)  # chunks of 512
    lowres[:, 512:] = 0  # an all-zero chunk: zarr skips those unless told to store them
    io.save_arrays(out, {"lowres": lowres})
    got, _ = io.load_arrays(out)
    assert np.array_equal(got["lowres"], lowres)
    chunk = out / "lowres" / "c" / "0" / "1" / "0"
    assert chunk.is_file()  # stored although it equals the fill value
    chunk.unlink()  # damage after the write: it would read back as zeros
    with pytest.raises(io.FeatureFileError, match=r"chunk 'c/0/1/0' of array 'lowres'.*512:600"):
        io.load_arrays(out)
    (out / "lowres" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(io.FeatureFileError, match=r"'c/0/0/0'.*and 1 more of 2"):
        io.load_features(out)


def test_zarr_written_before_the_chunk_mark_is_read_as_before(tmp_path):
    # files from earlier versions did not store all-zero chunks: no check, zeros as ever
    import zarr

    out = tmp_path / "old.zarr"
    g = zarr.open_group(str(out), mode="w")
    z = g.create_array("lowres", shape=(2, 70, 3), dtype=np.float32, chunks=(2, 64, 3))
    z[:, :64] = 1.0
    g.attrs[io.META_KEY] = {"arrays": ["lowres"]}
    assert not (out / "lowres" / "c" / "0" / "1" / "0").exists()
    got, _ = io.load_arrays(out)
    assert got["lowres"][:, 64:].max() == 0 and got["lowres"][:, :64].min() == 1
