"""Fuzz the feature-file readers: damaged, mislabelled and oddly-described files.

Targets: :func:`napari_featup.io.load_features` and napari's reader
(:func:`napari_featup._reader.get_reader` / ``read_features``, Qt-free). Property: a
well-formed result (``(C, h, w)`` arrays, a PCA that fits them; layer tuples a napari
``ViewerModel`` accepts) or a :class:`FeatureFileError` with a message; ``get_reader``
answers a reader or None and never raises.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_featup import io
from napari_featup._reader import get_reader, read_features
from napari_featup.analysis import PCAProjection, fit_pca
from napari_featup.errors import FeatureFileError
from napari_featup.pipeline import FeatureResult

EXTS = (".npz", ".zarr", ".tif", ".npy")


@pytest.fixture(scope="module")
def result() -> FeatureResult:
    rng = np.random.default_rng(0)
    lowres = rng.standard_normal((6, 2, 3)).astype(np.float32)
    highres = rng.standard_normal((6, 20, 30)).astype(np.float32)
    meta = {
        "napari_featup_version": "0.1.0",
        "backbone": "dino16",
        "upsampler": "bilinear",
        "stride": 10,
        "grid": [2, 3],
        "image_size": [20, 30],
        "source_layer": "cells",
        "source_scale": [0.5, 0.5],
        "source_translate": [1.0, 2.0],
    }
    res = FeatureResult(lowres=lowres, highres=highres, metadata=meta)
    res.pca = fit_pca(lowres)
    return res


@pytest.fixture(scope="module")
def originals(tmp_path_factory, result) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("originals")
    return {ext: io.save_features(folder / f"f{ext}", result) for ext in EXTS}


@pytest.fixture(scope="module")
def viewer():
    from napari.components import ViewerModel  # Qt-free

    return ViewerModel()


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    side = src.with_name(src.name + ".json")
    if side.exists():
        shutil.copyfile(side, dst.with_name(dst.name + ".json"))


def _damage(draw, data: bytes) -> bytes:
    op = draw(st.sampled_from(["truncate", "flip", "junk", "empty", "append"]))
    n = len(data)
    if op == "truncate":
        return data[: draw(st.integers(0, max(0, n - 1)))]
    if op == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            # half the flips land in the first 512 bytes, where headers live
            pos = draw(st.integers(0, min(n, 512) - 1) | st.integers(0, n - 1))
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    if op == "junk":
        start = draw(st.integers(0, n - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        return data[:start] + junk + data[start + len(junk) :]
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return b""


@st.composite
def damaged(draw, originals: dict[str, Path], folder: Path) -> Path:
    """A copy of a saved feature file, damaged or mislabelled."""
    ext = draw(st.sampled_from(EXTS))
    src = originals[ext]
    how = draw(st.sampled_from(["damage", "damage", "damage", "mislabel", "delete"]))
    if how == "mislabel":
        other = draw(st.sampled_from([e for e in EXTS + (".tiff",) if e != ext]))
        dst = folder / f"g{other}"
        _copy(src, dst)
        return dst
    dst = folder / f"g{ext}"
    _copy(src, dst)
    files = sorted(p for p in dst.rglob("*") if p.is_file()) if dst.is_dir() else [dst]
    side = dst.with_name(dst.name + ".json")
    if side.exists():
        files.append(side)
    target = draw(st.sampled_from(files))
    if how == "delete":
        if target != dst:  # deleting the file itself is "missing", tested elsewhere
            target.unlink()
        return dst
    target.write_bytes(_damage(draw, target.read_bytes()))
    return dst


def check_result(res: FeatureResult) -> None:
    assert isinstance(res, FeatureResult)
    assert res.lowres is not None or res.highres is not None
    dims = set()
    for arr in (res.lowres, res.highres):
        if arr is not None:
            assert isinstance(arr, np.ndarray) and arr.ndim == 3 and arr.size > 0
            assert arr.dtype.kind in "fiu"
            dims.add(arr.shape[0])
    assert len(dims) == 1, "low-res and full-res channels differ"
    assert isinstance(res.metadata, dict)
    if res.pca is not None:
        assert isinstance(res.pca, PCAProjection)
        assert res.pca.components.shape[1] == dims.pop()
        res.pca.to_rgb(res.lowres if res.lowres is not None else res.highres)


def check_reader(outcome, viewer, path: Path) -> None:
    reader, err = outcome(get_reader, str(path))
    assert err is None, "get_reader raised"
    layers, err = outcome(read_features, str(path))
    if err is not None:
        assert isinstance(err, FeatureFileError)
        return
    assert isinstance(layers, list)
    for data, kwargs, ltype in layers:
        assert isinstance(data, np.ndarray) and isinstance(kwargs, dict)
        viewer._add_layer_from_data(data, dict(kwargs), ltype)  # napari accepts it
    viewer.layers.clear()


def check_file(outcome, viewer, path: Path, reader: bool = True) -> None:
    res, err = outcome(io.load_features, path)
    if err is not None:
        assert isinstance(err, FeatureFileError)
    else:
        check_result(res)
    if reader:
        check_reader(outcome, viewer, path)


@given(data=st.data())
def test_damaged_files(outcome, originals, viewer, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = data.draw(damaged(originals, Path(tmp)), label="file")
        check_file(outcome, viewer, path)


# ------------------------------------------------------------------- metadata

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_leaf,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
numbers = st.lists(st.floats(-1e3, 1e3) | st.integers(-5, 5), min_size=0, max_size=4)


@st.composite
def feature_arrays(draw) -> dict[str, np.ndarray]:
    names = draw(
        st.lists(st.sampled_from(["lowres", "highres", "pca", "similarity", "x"]), unique=True)
    )
    out = {}
    for name in names:
        shape = draw(
            st.sampled_from(
                [
                    (6, 2, 3),
                    (6, 20, 30),
                    (4, 2, 3),
                    (6,),
                    (6, 2),
                    (1, 6, 2, 3),
                    (0, 2, 3),
                    (20, 30),
                    (20, 30, 3),
                    (2, 2, 4),
                ]
            )
        )
        dtype = draw(st.sampled_from(["f4", "f2", "f8", "u1", "i4", "?", "U2", "c8"]))
        out[name] = np.ones(shape, dtype)
    return out


@st.composite
def pca_meta(draw):
    comp = draw(st.integers(1, 4))
    chans = draw(st.sampled_from([6, 6, 4, 0]))
    good = {
        "components": np.ones((comp, chans)).tolist(),
        "mean": np.zeros(chans).tolist(),
        "low": np.zeros(comp).tolist(),
        "high": np.ones(comp).tolist(),
        "explained_variance_ratio": np.ones(comp).tolist(),
    }
    for key in draw(st.lists(st.sampled_from(sorted(good)), unique=True, max_size=2)):
        if draw(st.booleans()):
            del good[key]
        else:
            good[key] = draw(json_values)
    if draw(st.booleans()):
        good[draw(st.text(max_size=4))] = draw(json_values)
    return good


@st.composite
def layers_meta(draw, names):
    keys = draw(st.lists(st.sampled_from(sorted(names) + ["missing"]), unique=True))
    out = {}
    for key in keys:
        info = {
            "name": draw(st.text(max_size=6) | json_values),
            "layer_type": draw(
                st.sampled_from(["image", "labels", "points", "bogus"]) | json_values
            ),
            "rgb": draw(json_values),
            "scale": draw(numbers | json_values),
            "translate": draw(numbers | json_values),
            "colormap": draw(st.sampled_from(["gray", "inferno", "nope"]) | json_values),
            "napari_featup": draw(json_values),
        }
        for k in draw(st.lists(st.sampled_from(sorted(info)), unique=True, max_size=3)):
            del info[k]
        out[key] = info if draw(st.integers(0, 5)) else draw(json_values)
    return out


@st.composite
def metadata(draw, arrays):
    meta: dict = {}
    optional = {
        "napari_featup_version": st.sampled_from(["0.1.0", "99.0", "", "x.y"]) | json_values,
        "arrays": st.just(list(arrays)) | st.lists(st.text(max_size=6), max_size=3) | json_values,
        "pca": pca_meta() | json_values,
        "layers": layers_meta(arrays) | json_values,
        "stride": st.integers(-2, 40) | json_values,
        "source_scale": numbers | json_values,
        "source_translate": numbers | json_values,
        "source_layer": st.text(max_size=6) | json_values,
        "upsampler": st.text(max_size=6) | json_values,
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        meta[key] = draw(optional[key])
    # metadata that is not a JSON object at all
    which = draw(st.integers(0, 9))
    if which == 0:
        return draw(json_values)
    if which == 1:
        return draw(st.text(max_size=10))  # not JSON: written as is
    return meta


def write_raw(path: Path, arrays: dict[str, np.ndarray], meta) -> None:
    """Write a file in our layout but with any metadata (bypassing save_arrays' checks)."""
    text = meta if isinstance(meta, str) else json.dumps(meta)
    ext = path.suffix
    if ext == ".npz":
        np.savez(path, metadata=np.array(text), **arrays)
    elif ext == ".zarr":
        import zarr

        group = zarr.open_group(str(path), mode="w")
        for name, arr in arrays.items():
            group.create_array(name, shape=arr.shape, dtype=arr.dtype)[...] = arr
        group.attrs["napari_featup"] = meta
    elif ext == ".tif":
        import tifffile

        with tifffile.TiffWriter(path) as tw:
            for i, arr in enumerate(arrays.values()):
                if arr.dtype.kind in "bc":
                    arr = arr.real.astype(np.float32)
                tw.write(
                    arr,
                    description=text if i == 0 else "{}",
                    metadata=None,
                    photometric="minisblack",
                )
    else:
        np.save(path, next(iter(arrays.values())))
        path.with_name(path.name + ".json").write_text(text)


@given(data=st.data())
def test_odd_metadata_and_arrays(outcome, viewer, data):
    ext = data.draw(st.sampled_from(EXTS), label="ext")
    arrays = data.draw(feature_arrays(), label="arrays")
    arrays = {k: v for k, v in arrays.items() if ext != ".tif" or v.dtype.kind != "U"}
    if not arrays or (ext == ".npy" and len(arrays) > 1):
        arrays = {"lowres": np.ones((6, 2, 3), np.float32)}
    meta = data.draw(metadata(arrays), label="metadata")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{ext}"
        try:
            write_raw(path, arrays, meta)
        except Exception:  # noqa: BLE001 - the writing library refused: not our concern
            return
        check_file(outcome, viewer, path)


def test_intact_files_round_trip(originals, result):
    for _ext, path in originals.items():
        back = io.load_features(path)
        check_result(back)
        assert np.array_equal(back.highres, result.highres)


# -------------------------------------------------------------------- writers

array_names = st.sampled_from(["lowres", "highres", "pca", "a", "metadata", "", "a/b", "ü", "x y"])


@st.composite
def arrays_to_save(draw) -> dict[str, np.ndarray]:
    out = {}
    for name in draw(st.lists(array_names | st.text(max_size=4), unique=True, max_size=3)):
        shape = draw(
            st.sampled_from([(6, 2, 3), (2, 3), (5,), (), (0, 3), (1, 1, 1, 1), (3, 0, 2)])
        )
        dtype = draw(st.sampled_from(["f4", "f2", "f8", "u1", "u2", "i8", "?", "c8", "U2", "O"]))
        arr = np.ones(shape, dtype=dtype) if dtype != "O" else np.full(shape, None, dtype=object)
        out[name] = arr
    return out


@given(data=st.data())
def test_writers(outcome, data):
    """save_arrays writes a file that loads back equal, or raises FeatureFileError and
    leaves nothing behind; either way no temporary file remains."""
    ext = data.draw(st.sampled_from(EXTS + (".tiff",)), label="ext")
    arrays = data.draw(arrays_to_save(), label="arrays")
    meta = data.draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3), label="meta")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{ext}"
        saved, err = outcome(io.save_arrays, path, arrays, meta)
        left = sorted(p.name for p in Path(tmp).iterdir())
        if err is not None:
            assert isinstance(err, FeatureFileError)
            assert left == [], f"a failed write left {left}"
            return
        assert saved == path and all(not n.startswith(".") for n in left), left
        back, back_meta = io.load_arrays(path)
        assert sorted(back) == sorted(arrays)
        for name, arr in arrays.items():
            want = arr.astype(np.uint8) if arr.dtype == bool and ext in (".tif", ".tiff") else arr
            assert back[name].dtype == want.dtype and np.array_equal(back[name], want), name
        assert {k: back_meta[k] for k in meta} == json.loads(json.dumps(meta))
