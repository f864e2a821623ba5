"""The feature store: layout, signatures (stale inputs and settings are recomputed),
resume after a kill, and a dask.distributed run equal to the serial one."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import napari_featup as nf
from napari_featup.batch import BatchError, expand_inputs, extract_many
from napari_featup.io import META_KEY
from napari_featup.store import FeatureStore, open_store
from napari_featup.to_store import ExtractSettings

SETTINGS = dict(backbone="dino16", weights="random", upsampler="bilinear", device="cpu")


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield 1
    torch.set_num_threads(n)


def _images(folder: Path, rng, n=3, size=(72, 90)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tifffile.imwrite(folder / f"img{i}.tif", rng.integers(0, 4000, size).astype(np.uint16))
    return folder


def test_store_layout_and_reading(tmp_path, rng):
    src = _images(tmp_path / "in", rng, n=2)
    tifffile.imwrite(src / "stack.tif", rng.integers(0, 4000, (2, 50, 60)).astype(np.uint16))
    fs = extract_many(src, tmp_path / "f.zarr", **SETTINGS)
    assert fs.names() == ["img0", "img1", "stack-0000", "stack-0001"]
    im = open_store(tmp_path / "f.zarr")["img0"]
    assert im.features.dtype == np.float16 and im.features.shape == (384, 5, 6)
    assert im.pca.shape == (72, 90, 3) and im.pca.dtype == np.uint8
    assert im.pca_lowres.shape == (5, 6, 3)
    meta = im.metadata
    assert meta["lowres_scale"] == [16.0, 16.0] and meta["lowres_translate"] == [7.5, 7.5]
    assert meta["signature"]["data_digest"] and meta["random_weights"]
    assert im.projection is not None
    # the stored grid is the in-memory one, in float16
    ref = nf.extract_features(
        tifffile.imread(src / "img0.tif"), "dino16", weights="random", highres=False
    )
    assert np.allclose(im.lowres(), ref.lowres, atol=2e-3 * np.abs(ref.lowres).max())
    # zarr readers see one group per image
    import zarr

    assert sorted(zarr.open_group(str(tmp_path / "f.zarr"), mode="r").group_keys()) == fs.names()
    assert zarr.open_group(str(tmp_path / "f.zarr"), mode="r").attrs[META_KEY]["version"] == 1


def test_signature_detects_stale_inputs_and_settings(tmp_path, rng):
    src = _images(tmp_path / "in", rng)
    store = tmp_path / "f.zarr"
    extract_many(src, store, **SETTINGS)
    again = extract_many(src, store, **SETTINGS)
    assert again.report.computed == [] and len(again.report.skipped) == 3
    # same content rewritten (new mtime): the digest says it is current
    a = tifffile.imread(src / "img1.tif")
    time.sleep(0.01)
    tifffile.imwrite(src / "img1.tif", a)
    assert extract_many(src, store, **SETTINGS).report.computed == []
    # changed pixels: only that image is recomputed
    a[3, 4] += 1
    tifffile.imwrite(src / "img1.tif", a)
    assert extract_many(src, store, **SETTINGS).report.computed == ["img1"]
    # changed settings (scale, dtype): everything is stale
    rep = extract_many(src, store, **SETTINGS, downsample=2).report
    assert sorted(rep.computed) == ["img0", "img1", "img2"]
    assert FeatureStore(store)["img0"].metadata["stride"] == 32
    # in-memory arrays are signed by their content
    arrays = {"a": a, "b": a + 1}
    extract_many(arrays, store, **SETTINGS)
    arrays["b"] = a + 2
    assert extract_many(arrays, store, **SETTINGS).report.computed == ["b"]


def test_ome_zarr_input_uses_the_matching_level(tmp_path, grey16):
    from .test_sources import _ome_zarr

    path = _ome_zarr(tmp_path / "img.ome.zarr", grey16)
    fs = extract_many(path, tmp_path / "f.zarr", **SETTINGS, downsample=2, pca="lowres")
    meta = fs["img"].metadata
    assert meta["source"]["level"] == 1 and meta["stride"] == 16  # 32 px = 16 at level 1
    assert meta["level0_lowres_scale"] == [32.0, 32.0]
    assert fs["img"].features.shape[-2:] == (7, 8) and fs["img"].pca is None


def test_failed_image_does_not_stop_the_batch(tmp_path, rng):
    src = _images(tmp_path / "in", rng, n=2)
    tifffile.imwrite(src / "tiny.tif", np.zeros((4, 4), np.uint16))  # smaller than a patch
    with pytest.raises(BatchError, match="tiny") as err:
        extract_many(src, tmp_path / "f.zarr", **SETTINGS)
    assert err.value.store.names() == ["img0", "img1"]
    assert not (tmp_path / ".f.zarr.partial").exists() or not any(
        (tmp_path / ".f.zarr.partial").iterdir()
    )


def test_resume_after_kill_redoes_only_the_unfinished(tmp_path, rng):
    src = _images(tmp_path / "in", rng, n=5, size=(300, 300))
    store = tmp_path / "f.zarr"
    script = textwrap.dedent(f"""
        import torch; torch.set_num_threads(1)
        from napari_featup.batch import extract_many
        extract_many({str(src)!r}, {str(store)!r}, backbone="dino16", weights="random",
                     device="cpu")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if store.is_dir() and len(list(store.glob("*/zarr.json"))) >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = FeatureStore(store).names()
    assert 1 <= len(done) < 5, done
    torch.set_num_threads(1)
    fs = extract_many(src, store, **SETTINGS)
    assert sorted(fs.report.skipped) == done
    assert sorted(fs.report.computed) == sorted(set(f"img{i}" for i in range(5)) - set(done))
    ref = extract_many(src, tmp_path / "ref.zarr", **SETTINGS)
    for name in ref.names():  # nothing lost or half-written: equal to a clean run
        assert np.array_equal(fs[name].features[...], ref[name].features[...])
        # PCA colours: the killed child ran BLAS on 1 thread, this process may not, so
        # the fit's last bits (and a rare uint8 rounding) can differ; features are exact
        diff = np.abs(fs[name].pca[...].astype(int) - ref[name].pca[...].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_distributed_equals_serial(tmp_path, rng, threads, monkeypatch):
    from dask.distributed import Client, LocalCluster

    from napari_featup import to_store

    src = _images(tmp_path / "in", rng, n=4)
    serial = extract_many(src, tmp_path / "serial.zarr", **SETTINGS, threads=1)
    loads = []
    real = to_store._load_models
    monkeypatch.setattr(to_store, "_MODELS", {})
    monkeypatch.setattr(to_store, "_load_models", lambda s: loads.append(1) or real(s))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        dist = extract_many(src, tmp_path / "dist.zarr", **SETTINGS, scheduler=client)
    assert sorted(dist.report.computed) == serial.names() == dist.names()
    assert len(loads) == 1  # two worker threads, four images, one model load
    for name in serial.names():
        for arr in ("features", "pca", "pca_lowres"):
            assert np.array_equal(serial[name].group[arr][...], dist[name].group[arr][...])


def test_expand_inputs_globs_folders_and_duplicates(tmp_path, rng):
    _images(tmp_path / "a", rng, n=2)
    _images(tmp_path / "b", rng, n=1)
    s = ExtractSettings(**SETTINGS)
    items = expand_inputs([str(tmp_path / "a" / "*.tif"), tmp_path / "b"], s)
    names = [it.name for it in items]
    assert len(names) == 3 and len(set(names)) == 3
    with pytest.raises(FileNotFoundError):
        expand_inputs([tmp_path / "missing.tif"], s)


def test_missing_chunk_raises_and_the_next_run_recomputes(tmp_path, rng, threads):
    src = _images(tmp_path / "in", rng, n=1, size=(40, 600))  # grid 3 x 38: two chunks
    store = tmp_path / "f.zarr"
    fs = extract_many(src, store, **SETTINGS, threads=threads)
    before = fs["img0"].features[...]
    chunk = store / "img0" / "features" / "c" / "0" / "0" / "1"
    assert chunk.is_file()
    chunk.unlink()  # lost after the write (a bad copy, a disk error)
    with pytest.raises(nf.FeatureFileError, match=r"image 'img0'.*chunk 'c/0/0/1'.*32:38"):
        open_store(store)["img0"].lowres()
    assert not open_store(store)["img0"].intact()
    fs = extract_many(src, store, **SETTINGS, threads=threads)  # not taken as current
    assert fs.report.computed == ["img0"]
    assert np.array_equal(fs["img0"].features[...], before)
