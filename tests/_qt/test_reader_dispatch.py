"""Which reader napari picks: plain files as without the plugin, FeatUp files as layers.

Goes through napari's own ``viewer.open(path, plugin=None)``, the call napari's File >
Open and drag-and-drop make (it raises MultipleReaderError, the "Choose reader"
dialog in the GUI, when two readers claim a file).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_featup.io import META_KEY, save_features  # noqa: E402


def _plain_files(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, (30, 40), dtype=np.uint16)
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, data)
    npy = tmp_path / "cells.npy"
    np.save(npy, data)
    import zarr

    z = zarr.open_array(str(tmp_path / "cells.zarr"), mode="w", shape=data.shape, dtype=data.dtype)
    z[...] = data
    return data, [tif, npy, tmp_path / "cells.zarr"]


def test_plain_files_open_as_without_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")  # the plugin is in use
    data, paths = _plain_files(tmp_path)
    for path in paths:
        expected = viewer.open(str(path), plugin="napari")  # napari's reader, forced
        viewer.layers.clear()
        (layer,) = viewer.open(str(path), plugin=None)  # no "Choose reader" dialog
        assert layer.name == expected[0].name
        np.testing.assert_array_equal(np.asarray(layer.data), data)
        assert META_KEY not in layer.metadata
        viewer.layers.clear()


def test_featup_files_open_as_layers_by_default(qtbot, make_napari_viewer, tmp_path):
    from napari_featup import extract_features

    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    img = np.random.default_rng(4).integers(0, 255, (28, 42, 3), dtype=np.uint8)
    res = extract_features(img, "dinov2", "bilinear", weights="random", device="cpu")
    res.fit_pca()
    for suffix in (".featup.npz", ".featup.tif"):
        path = save_features(tmp_path / f"feats{suffix}", res)
        layers = viewer.open(str(path), plugin=None)
        assert [lyr.name for lyr in layers] == ["feats PCA low-res", "feats PCA bilinear"]
        assert all(lyr.rgb for lyr in layers)
        viewer.layers.clear()


def test_older_files_open_when_chosen(qtbot, make_napari_viewer, tmp_path):
    """Files named before the .featup suffix (and zarr folders, which napari cannot
    route by name) open from the widget; napari itself reads them as plain arrays."""
    from napari_featup import extract_features

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    img = np.random.default_rng(4).integers(0, 255, (28, 42, 3), dtype=np.uint8)
    res = extract_features(img, "dinov2", "bilinear", weights="random", device="cpu")
    for name in ("old.npz", "old.zarr", "store.featup.zarr"):
        path = save_features(tmp_path / name, res)
        chosen = path / "zarr.json" if path.suffix == ".zarr" else path  # a dialog's pick
        layers = widget.open_features(chosen)
        stem = path.name.split(".")[0]
        assert [lyr.name for lyr in layers] == [f"{stem} PCA low-res", f"{stem} PCA bilinear"]
        viewer.layers.clear()
    from napari.plugins._npe2 import get_readers

    for name in ("old.npz", "old.zarr"):  # napari does not offer FeatUp for them
        assert "napari-featup" not in get_readers(str(tmp_path / name))
    assert "napari-featup" in get_readers(str(tmp_path / "x.featup.npz"))
