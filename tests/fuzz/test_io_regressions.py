"""Feature files the fuzzer found mishandled, kept as plain regression tests.

Each test names what used to happen (an exception other than FeatureFileError, a
silently wrong result, or a layer napari refused).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_featup import io
from napari_featup._reader import get_reader, read_features
from napari_featup.analysis import fit_pca
from napari_featup.errors import FeatureFileError
from napari_featup.pipeline import FeatureResult


@pytest.fixture(scope="module")
def result() -> FeatureResult:
    rng = np.random.default_rng(0)
    lowres = rng.standard_normal((6, 2, 3)).astype(np.float32)
    res = FeatureResult(
        lowres=lowres,
        highres=rng.standard_normal((6, 20, 30)).astype(np.float32),
        metadata={"napari_featup_version": "0.1.0", "stride": 10, "upsampler": "bilinear"},
    )
    res.pca = fit_pca(lowres)
    return res


def _saved(tmp_path: Path, result, ext: str) -> Path:
    return io.save_features(tmp_path / f"f{ext}", result)


def _refused(path: Path, match: str = "") -> None:
    with pytest.raises(FeatureFileError, match=match):
        io.load_features(path)
    with pytest.raises(FeatureFileError, match=match):
        read_features(str(path))
    get_reader(str(path))  # answers, never raises


# ------------------------------------------------------------ damaged files


def test_truncated_npz(tmp_path, result):  # was EOFError / zipfile.BadZipFile
    path = _saved(tmp_path, result, ".npz")
    path.write_bytes(path.read_bytes()[:300])
    _refused(path, "not a readable feature file")


def test_bit_flip_in_npz_data(tmp_path, result):  # was zipfile.BadZipFile (CRC)
    path = _saved(tmp_path, result, ".npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    _refused(path)


def test_damaged_npy_header(tmp_path, result):  # was SyntaxError / tokenize.TokenError
    path = _saved(tmp_path, result, ".npy")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"'shape': (", b"'shape': (((", 1))
    _refused(path, "not a readable feature file")


def test_npy_named_npz(tmp_path, result):  # was TypeError (ndarray is no context manager)
    src = _saved(tmp_path, result, ".npy")
    dst = tmp_path / "g.npz"
    shutil.copyfile(src, dst)
    _refused(dst, "not an .npz archive")


def test_file_named_zarr(tmp_path, result):  # was zarr's own errors
    dst = tmp_path / "g.zarr"
    shutil.copyfile(_saved(tmp_path, result, ".npz"), dst)
    _refused(dst, "a .zarr store is a folder")


def test_corrupt_zarr_chunk(tmp_path, result):  # was RuntimeError (zstd)
    path = _saved(tmp_path, result, ".zarr")
    chunk = next(
        p for p in sorted((path / "highres").rglob("*")) if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(b"\x00" * 7)
    _refused(path, "not a readable feature file")


def test_zarr_without_root_metadata(tmp_path, result):  # was zarr's GroupNotFoundError
    path = _saved(tmp_path, result, ".zarr")
    (path / "zarr.json").unlink()
    _refused(path, "not a readable feature file")


def test_tif_with_a_two_dimensional_map(tmp_path):  # was accepted: lowres of ndim 2
    import tifffile

    path = tmp_path / "f.tif"
    meta = {"arrays": ["lowres"], "napari_featup_version": "0.1.0"}
    tifffile.imwrite(path, np.ones((4, 5), np.float32), description=json.dumps(meta))
    _refused(path, "expected \\(channels, height, width\\)")


def test_tif_without_features_in_reader(tmp_path):  # the reader raised ValueError
    import tifffile

    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.ones((4, 5), np.float32), description=json.dumps({"arrays": ["x"]}))
    _refused(path, "holds no 'lowres' or 'highres'")


# ----------------------------------------------------------------- metadata


def _npz(tmp_path: Path, meta, **arrays) -> Path:
    path = tmp_path / "f.npz"
    text = meta if isinstance(meta, str) else json.dumps(meta)
    np.savez(path, metadata=np.array(text), **(arrays or {"lowres": np.ones((6, 2, 3), "f4")}))
    return path


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ([1, 2], "is a list, not a JSON object"),  # was AttributeError ('list'.get)
        ("{not json", "not valid JSON"),  # was refused already; the message now says why
        ({"arrays": 5}, "must list the array names"),  # was TypeError
        ({"pca": {"components": [[1.0]]}}, "not a PCA of these features"),  # was TypeError
        (
            {
                "pca": {
                    "components": [[1.0] * 4] * 3,
                    "mean": [0.0] * 4,
                    "low": [0.0] * 3,
                    "high": [1.0] * 3,
                    "explained_variance_ratio": [1.0] * 3,
                }
            },
            "fitted on 4 channels",
        ),  # was ValueError in the reader's to_rgb
        ({"pca": "yes"}, "not a dict"),  # was silently ignored
        ({"stride": "abc"}, "'stride'"),  # the reader raised ValueError from int()
        ({"source_scale": 5}, "'source_scale'"),  # the reader raised TypeError
        ({"source_scale": [0, 1]}, "non-zero"),  # napari refused the layer (scale 0)
        ({"layers": {"lowres": 5}}, "not a dict"),  # was AttributeError
        ({"layers": [1]}, "not a dict of layers"),  # was AttributeError
        ({"layers": {"lowres": {"layer_type": "points"}}}, "opens image and labels"),
        ({"layers": {"lowres": {"scale": [1, 1]}}}, "expected 3 finite"),  # napari refused
    ],
)
def test_bad_metadata(tmp_path, meta, match):
    path = _npz(tmp_path, meta)
    with pytest.raises(FeatureFileError, match=match):
        read_features(str(path))


def test_rgb_layer_without_colour_axis(tmp_path):  # napari refused the layer
    path = _npz(tmp_path, {"layers": {"a": {"rgb": True}}}, a=np.ones((4, 4, 5), "u1"))
    with pytest.raises(FeatureFileError, match="not a RGB image layer"):
        read_features(str(path))


def test_sidecar_that_is_not_an_object(tmp_path, result):  # was AttributeError
    path = _saved(tmp_path, result, ".npy")
    (tmp_path / "f.npy.json").write_text("[1, 2]")
    _refused(path, "not a JSON object")


def test_zarr_attribute_that_is_not_an_object(tmp_path, result):  # was TypeError from dict()
    import zarr

    path = _saved(tmp_path, result, ".zarr")
    zarr.open_group(str(path), mode="r+").attrs["napari_featup"] = [1, 2]
    _refused(path, "not a JSON object")


def test_metadata_entry_that_is_not_a_string(tmp_path):  # was read as str(array)
    path = tmp_path / "f.npz"
    np.savez(path, metadata=np.arange(3), lowres=np.ones((6, 2, 3), "f4"))
    _refused(path, "not a JSON string")


def test_unknown_colormap_is_dropped(tmp_path):  # napari raised KeyError on the layer
    meta = {"layers": {"lowres": {"layer_type": "image", "colormap": "no-such-map"}}}
    ((data, kwargs, ltype),) = read_features(str(_npz(tmp_path, meta)))
    assert "colormap" not in kwargs and ltype == "image"


def test_pca_of_one_component_is_shown_as_rgb(tmp_path):  # napari refused rgb=True
    pca = {
        "components": [[1.0] * 6],
        "mean": [0.0] * 6,
        "low": [0.0],
        "high": [1.0],
        "explained_variance_ratio": [1.0],
    }
    layers = read_features(str(_npz(tmp_path, {"pca": pca})))
    assert layers[0][0].shape == (2, 3, 3)


def test_newer_version_reads_and_errors_say_so(tmp_path, result):
    path = _saved(tmp_path, result, ".npz")
    arrays, meta = io.load_arrays(path)
    meta.update(napari_featup_version="99.0", a_key_from_the_future={"x": 1})
    np.savez(path, metadata=np.array(json.dumps(meta)), **arrays)
    assert io.load_features(path).metadata["a_key_from_the_future"] == {"x": 1}
    meta["pca"] = {"components": "new layout"}
    np.savez(path, metadata=np.array(json.dumps(meta)), **arrays)
    _refused(path, "written by napari-featup 99.0, newer than this")


# ------------------------------------------------------------------ writers


def test_tif_keeps_arrays_of_equal_shape_apart(tmp_path):  # the second one was lost
    a, b = np.zeros((2, 3, 4), "f4"), np.ones((2, 3, 4), "f4")
    io.save_arrays(tmp_path / "f.tif", {"a": a, "b": b})
    back, _ = io.load_arrays(tmp_path / "f.tif")
    assert np.array_equal(back["a"], a) and np.array_equal(back["b"], b)


@pytest.mark.parametrize(
    ("ext", "arrays", "match"),
    [
        (".tif", {"a": np.ones(5, "f4")}, "2 or more dimensions"),  # was IndexError
        (".tif", {"a": np.ones((0, 3), "f4")}, "non-empty"),  # a nonconformant TIFF
        (".npz", {"a": np.array([None, 1], dtype=object)}, "dtype object"),  # was pickled
        (".zarr", {"a": np.array(["x"])}, "dtype <U1"),  # was zarr's error
        (".tif", {"a": np.ones((2, 2), "c8")}, "dtype complex64"),  # was tifffile's error
        (".zarr", {"a/b": np.ones((2, 2))}, "array name"),  # made a nested group
        (".npz", {"": np.ones((2, 2))}, "array name"),
    ],
)
def test_writer_refuses_what_it_cannot_hold(tmp_path, ext, arrays, match):
    with pytest.raises(FeatureFileError, match=match):
        io.save_arrays(tmp_path / f"f{ext}", arrays)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_circular_metadata(tmp_path):  # was ValueError from json
    meta: dict = {}
    meta["self"] = meta
    with pytest.raises(FeatureFileError, match="JSON"):
        io.save_arrays(tmp_path / "f.npz", {"a": np.ones(2)}, meta)
    assert list(tmp_path.iterdir()) == []
