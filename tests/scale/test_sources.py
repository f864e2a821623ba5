"""Lazy inputs: numpy, dask, zarr, OME-Zarr (level choice) and tiled TIFF give the same
features as the array in memory, reading by regions."""

import numpy as np
import pytest
import zarr

import napari_featup as nf
from napari_featup.source import as_source, open_image, pick_level, preprocessing_of

from .conftest import patch_backbone


class CountingArray:
    """An array-like that records the largest region read (to prove lazy reading)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.largest = a, a.shape, a.dtype, 0

    def __getitem__(self, key):
        out = self.a[key]
        self.largest = max(self.largest, out.size)
        return out


def _feats(img, **kw):
    return nf.extract_features(img, patch_backbone(8, 16), tile_size=64, highres=False, **kw)


def test_array_likes_equal_numpy(grey16, tmp_path):
    import dask.array as da

    ref = _feats(grey16).lowres
    z = zarr.open_array(
        str(tmp_path / "a.zarr"), mode="w", shape=grey16.shape, chunks=(64, 64), dtype=grey16.dtype
    )
    z[...] = grey16
    for arr in (da.from_array(grey16, chunks=50), zarr.open_array(str(tmp_path / "a.zarr"))):
        assert np.array_equal(_feats(arr).lowres, ref)


def test_regions_are_read_not_the_whole_image(rng):
    big = rng.integers(0, 4000, (3000, 2000)).astype(np.uint16)
    arr = CountingArray(big)
    src = as_source(arr)
    prepared = preprocessing_of(src)
    assert prepared.record.extra["limits_from"].startswith("every 2th")
    arr.largest = 0
    prepared.working(0, 8, 0, 8, 8, 8, "cpu")
    assert arr.largest == 64 * 64


def test_channel_axis_and_plane_selection(rng):
    stack = rng.integers(0, 255, (2, 3, 40, 50)).astype(np.uint8)  # (z, c, y, x)
    src = as_source(stack, channel_axis=0, plane=(1,))
    assert src.shape == (40, 50) and src.layout == "multichannel"
    assert np.array_equal(src.read(slice(0, 5), slice(0, 7)), np.moveaxis(stack[1], 0, -1)[:5, :7])
    padded = src.read_padded(38, 42, 48, 52)  # reflect past the bottom/right
    assert np.array_equal(padded[2], padded[0]) and np.array_equal(padded[:, 2], padded[:, 0])


def _ome_zarr(path, img, levels=3):
    root = zarr.open_group(str(path), mode="w")
    datasets = []
    for lv in range(levels):
        f = 2**lv
        a = img[: img.shape[0] // f * f, : img.shape[1] // f * f]
        a = a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean((1, 3)).astype(img.dtype)
        root.create_array(str(lv), shape=a.shape, chunks=(64, 64), dtype=a.dtype)[...] = a
        datasets.append(
            {
                "path": str(lv),
                "coordinateTransformations": [{"type": "scale", "scale": [0.5 * f, 0.5 * f]}],
            }
        )
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": datasets,
        }
    ]
    return path


def test_ome_zarr_picks_the_level_nearest_the_working_scale(grey16, tmp_path):
    path = _ome_zarr(tmp_path / "img.ome.zarr", grey16)
    assert pick_level([1, 2, 4], 8, 8) == 0
    assert pick_level([1, 2, 4], 16, 8) == 1
    assert pick_level([1, 2, 4], 32, 8) == 2
    assert pick_level([1, 2, 4], 24, 8) == 1  # 12 px per cell at level 1
    assert pick_level([1, 3], 28, 8) == 0  # 28 / 3 is no whole pixel: stay at level 0
    arr, origin = open_image(path, pixels_per_patch=16, patch_size=8)
    assert origin["level"] == 1 and origin["level_factor"] == 2 and arr.shape == (100, 116)
    arr0, origin0 = open_image(path)
    assert origin0["level"] == 0 and np.array_equal(arr0[...], grey16)


def test_tiff_through_zarr(grey16, tmp_path):
    import tifffile

    p = tmp_path / "img.tif"
    tifffile.imwrite(p, grey16, tile=(64, 64))
    arr, origin = open_image(p)
    assert not isinstance(arr, np.ndarray) and arr.shape == grey16.shape
    assert np.array_equal(_feats(arr).lowres, _feats(grey16).lowres)


@pytest.mark.parametrize("shape", [(30, 40, 3), (30, 40)])
def test_small_images_keep_whole_image_preprocessing(shape, rng):
    from napari_featup.preprocess import prepare_image

    img = rng.integers(0, 255, shape).astype(np.uint8)
    assert preprocessing_of(as_source(img)).record.limits == prepare_image(img)[1].limits


def test_pyramidal_tiff_levels(tmp_path, rng):
    import tifffile

    a = rng.integers(0, 4000, (1001, 1002)).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "pyr.tif") as tw:
        tw.write(a, tile=(256, 256), subifds=2)
        tw.write(a[::2, ::2], tile=(256, 256), subfiletype=1)
        tw.write(a[::4, ::4], tile=(256, 256), subfiletype=1)
    for ppp, level in [(14, 0), (28, 1), (56, 2), (42, 1), (21, 0)]:
        arr, origin = open_image(tmp_path / "pyr.tif", pixels_per_patch=ppp, patch_size=14)
        assert origin["level"] == level and arr.shape[-1] == a[:, :: 2**level].shape[-1]


def test_per_channel_limits_are_applied_per_tile(rng):
    """A record with one range per channel (multichannel scaled from its data) maps each
    channel by its own range before mixing, tile by tile."""
    from dataclasses import replace

    img = np.stack([rng.integers(0, 100, (40, 50)), rng.integers(0, 4000, (40, 50))], -1)
    prepared = preprocessing_of(as_source(img.astype(np.uint16), channel_axis=-1))
    lims = [[0.0, 100.0], [0.0, 4000.0]]
    rec = replace(prepared.record, extra={"per_channel": True, "channel_limits": lims})
    rec.channels = [0, 1, 1]
    got = type(prepared)(prepared.source, rec).region01(5, 25, 0, 50)
    want = np.clip(img[5:25].astype(np.float32) / [100.0, 4000.0], 0, 1)
    assert np.allclose(got, np.moveaxis(want[..., [0, 1, 1]], -1, 0), atol=1e-6)


def test_tiles_match_whole_image_per_channel_scaling(rng):
    """End to end with prepare_image's own per-channel percentiles: regions read tile by
    tile equal the whole image prepared at once (a dim channel keeps its own range)."""
    from napari_featup.preprocess import prepare_image

    img = np.stack(
        [
            rng.integers(0, 100, (60, 70)),
            rng.integers(0, 4000, (60, 70)),
            rng.integers(0, 9, (60, 70)),
        ],
        -1,
    ).astype(np.uint16)
    want, record = prepare_image(img, channel_axis=-1, channels=[0, 1, 2])
    assert record.extra.get("per_channel") and len(record.extra["channel_limits"]) == 3
    prepared = preprocessing_of(as_source(img, channel_axis=-1), channels=[0, 1, 2])
    assert prepared.record.extra["channel_limits"] == record.extra["channel_limits"]
    got = np.concatenate([prepared.region01(r, r + 20, 0, 70) for r in (0, 20, 40)], axis=1)
    assert np.allclose(got, want, atol=1e-6)
