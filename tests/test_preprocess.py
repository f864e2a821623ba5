import dask.array as da
import numpy as np
import pytest

from napari_featup.preprocess import IMAGENET_MEAN, ImageError, normalize, prepare_image


def test_uint8_rgb_uses_full_range():
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    x, rec = prepare_image(img)
    assert x.shape == (3, 4, 5) and x.dtype == np.float32
    assert rec.layout == "rgb" and rec.scaling == "range" and rec.limits == (0.0, 255.0)
    assert np.allclose(x[:, 0, 0], [1.0, 0.0, 128 / 255])


def test_rgba_drops_alpha():
    img = np.full((4, 4, 4), 100, np.uint8)
    img[..., 3] = 7
    x, rec = prepare_image(img)
    assert rec.layout == "rgba" and rec.channels == [0, 1, 2]
    assert np.allclose(x, 100 / 255)


def test_uint16_grey_uses_percentiles_and_repeats_channel():
    img = np.linspace(0, 4000, 100 * 50, dtype=np.float64).reshape(100, 50).astype(np.uint16)
    x, rec = prepare_image(img, percentiles=(1, 99))
    assert rec.layout == "grey" and rec.scaling == "percentile" and rec.channels == [0, 0, 0]
    lo, hi = np.percentile(img, (1, 99))
    assert rec.limits == pytest.approx((lo, hi))
    assert np.allclose(x[0], x[1]) and np.allclose(x[0], x[2])
    assert x.min() == 0.0 and x.max() == 1.0


def test_contrast_limits_win_in_auto():
    img = np.array([[0, 50, 100, 200]], np.uint16).repeat(4, 0)
    x, rec = prepare_image(img, contrast_limits=(50, 150))
    assert rec.scaling == "contrast_limits"
    assert np.allclose(x[0, 0], [0, 0, 0.5, 1.0])


def test_float_and_bool():
    f = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    x, rec = prepare_image(f, scaling="range")
    assert np.allclose(x[0], f)
    b = np.array([[True, False], [False, True]])
    x, rec = prepare_image(b)
    assert rec.scaling == "range" and np.allclose(x[0], b.astype(np.float32))


def test_minmax_and_flat_image():
    img = np.array([[10.0, 20.0], [30.0, 50.0]])
    x, _ = prepare_image(img, scaling="minmax")
    assert x.min() == 0 and x.max() == 1
    flat, rec = prepare_image(np.full((3, 3), 7, np.uint16), scaling="minmax")
    assert np.allclose(flat, 0.5)


def test_multichannel_channel_axis_choice_and_mixing():
    img = np.stack([np.full((6, 7), v, np.uint8) for v in (0, 51, 102, 255)])  # (4, H, W)
    x, rec = prepare_image(img, channel_axis=0, channels=[3, 1, 0], scaling="range")
    assert rec.layout == "multichannel" and rec.channels == [3, 1, 0]
    assert np.allclose(x[:, 0, 0], [1.0, 0.2, 0.0])
    # default for 4 channels: their mean as grey
    x, rec = prepare_image(img, channel_axis=0, scaling="range")
    assert np.allclose(x[:, 0, 0], np.mean([0, 51, 102, 255]) / 255)
    mix = np.array([[1, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 0, 1.0]])
    x, _ = prepare_image(img, channel_axis=0, channels=mix, scaling="range")
    assert np.allclose(x[:, 0, 0], [0, (51 + 102) / 2 / 255, 1.0])


def test_two_channel_last_axis():
    img = np.random.default_rng(0).random((8, 9, 2))
    x, rec = prepare_image(img, channel_axis=-1)
    assert x.shape == (3, 8, 9) and rec.layout == "multichannel"


def test_dask_input():
    img = da.from_array(np.arange(64, dtype=np.uint16).reshape(8, 8), chunks=4)
    x, rec = prepare_image(img, scaling="minmax")
    assert x.shape == (3, 8, 8) and x[0, -1, -1] == 1.0


@pytest.mark.parametrize(
    "image, kwargs, match",
    [
        (np.zeros((0, 5)), {}, "empty"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]]), {}, "NaN or infinite"),
        (np.array([[np.inf, 1.0], [2.0, 3.0]]), {}, "NaN or infinite"),
        (np.zeros((2, 3, 4, 5, 6)), {}, "channel_axis"),
        (np.zeros((5, 8, 8)), {}, "stack"),
        (np.zeros((4, 4, 3)), {"channel_axis": 5}, "out of range"),
        (
            np.zeros((3, 4, 4)),
            {"channel_axis": 0, "channels": [0, 1, 7]},
            "channel 7 does not exist",
        ),
        (np.zeros((4, 4)), {"scaling": "magic"}, "unknown scaling"),
        (np.array([["a", "b"]]), {}, "dtype"),
        (np.zeros((4, 4), complex), {}, "complex"),
        (np.zeros((4, 4)), {"scaling": "contrast_limits"}, "needs contrast_limits"),
    ],
)
def test_bad_inputs_get_clear_errors(image, kwargs, match):
    with pytest.raises(ImageError, match=match):
        prepare_image(image, **kwargs)


def test_normalize_numpy_and_torch_agree():
    import torch

    x = np.full((3, 2, 2), 0.5, np.float32)
    n = normalize(x)
    assert np.allclose(n[0], (0.5 - IMAGENET_MEAN[0]) / 0.229)
    assert np.allclose(normalize(torch.from_numpy(x)).numpy(), n)


def test_multichannel_percentiles_scale_each_channel():
    """A dim fluorescence channel next to a bright one keeps its contrast (issue 17):
    percentile (and auto, for uint16) scaling is per channel, recorded as such."""
    from napari_featup.preprocess import prepare_image

    rng = np.random.default_rng(0)
    bright = rng.integers(10000, 60000, (32, 40)).astype(np.uint16)
    dim = rng.integers(100, 900, (32, 40)).astype(np.uint16)
    img = np.stack([bright, dim, bright // 2])  # (C, Y, X)
    for scaling in ("auto", "percentile", "minmax"):
        x, prep = prepare_image(img, channel_axis=0, scaling=scaling)
        assert prep.layout == "multichannel" and prep.extra["per_channel"] is True
        assert x[1].max() > 0.95 and x[1].min() < 0.05, scaling  # the dim channel spans
        limits = prep.extra["channel_limits"]
        assert len(limits) == 3 and limits[1][1] < 1000 < limits[0][0]
        assert prep.to_dict()["extra"]["per_channel"] is True  # in metadata["preprocessing"]
    # the caller's array is not changed; RGB photos keep one range (colour balance)
    before = img.copy()
    prepare_image(img.astype(np.float32), channel_axis=0, scaling="percentile")
    np.testing.assert_array_equal(img, before)
    _, prep = prepare_image(np.moveaxis(img, 0, -1), scaling="percentile")
    assert prep.layout == "rgb" and "per_channel" not in prep.extra
