"""Fuzz ``prepare_image``: any dtype, any ndim, NaN/inf, constants, strips, dask.

Property: a float32 (3, H, W) array in [0, 1] for the image's plane, or an
:class:`ImageError` with a message; never another exception.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_featup.errors import ImageError
from napari_featup.preprocess import SCALINGS, prepare_image

ACCEPTED = [
    np.bool_,
    np.int8,
    np.uint8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.longdouble,
]
REJECTED = [np.complex64, np.complex128, "M8[s]", "m8[s]", "U3", "S2", object]

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def shapes(draw) -> tuple[int, ...]:
    kind = draw(st.sampled_from(["any"] * 2 + ["plane"] * 5 + ["strip"] * 2 + ["empty"]))
    if kind == "plane":
        h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        return draw(
            st.sampled_from([(h, w), (h, w, 3), (h, w, 4), (h, w, draw(st.integers(1, 6)))])
        )
    if kind == "strip":  # one pixel wide or high, with or without channels
        n = draw(st.integers(1, 40))
        return draw(st.sampled_from([(1, n), (n, 1), (1, n, 3), (n, 1, 3), (1, 1), (2, 1, n)]))
    if kind == "empty":
        return draw(st.sampled_from([(0,), (0, 5), (5, 0), (0, 0, 3), (3, 4, 0)]))
    ndim = draw(st.integers(0, 6))
    side = {0: 1, 1: 12, 2: 9, 3: 6, 4: 4, 5: 3, 6: 2}[ndim]
    return draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=side))


@st.composite
def images(draw) -> np.ndarray:
    shape = draw(shapes())
    if draw(st.integers(0, 14)) == 0:
        dtype = np.dtype(draw(st.sampled_from(REJECTED)))
        if dtype.kind == "O":
            return np.full(shape, 1, dtype=object)
    else:
        dtype = np.dtype(draw(st.sampled_from(ACCEPTED)))
    if draw(st.booleans()) and dtype.kind in "biuf":  # constant images
        value = draw(hnp.from_dtype(dtype)) if dtype != np.longdouble else draw(floats)
        return np.full(shape, value, dtype=dtype)
    elements = None
    if dtype == np.longdouble:
        elements = floats
    elif dtype.kind == "f" and draw(st.integers(0, 2)) == 0:
        elements = st.floats(0, 1, width=16 if dtype == np.float16 else 32)  # all finite
    elif dtype.kind == "f":
        # bias floats toward NaN/inf mixes and extremes as well as ordinary values
        elements = st.one_of(
            hnp.from_dtype(dtype),
            st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.0]),
            st.floats(0, 1, width=16 if dtype == np.float16 else 32),
        )
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def wrapped(draw, arr: np.ndarray):
    how = draw(st.sampled_from(["numpy", "numpy", "dask", "view"]))
    if how == "dask" and arr.dtype != object:
        chunks = draw(st.integers(1, 4))
        return da.from_array(arr, chunks=chunks)
    if how == "view" and arr.ndim >= 1:
        # a non-contiguous view of the same values
        return np.repeat(arr, 2, axis=-1)[..., ::2]
    return arr


@st.composite
def kwargs(draw, ndim: int) -> dict:
    kw: dict = {}
    if draw(st.booleans()):
        # mostly an axis that exists, sometimes one that does not
        if ndim and draw(st.integers(0, 3)):
            kw["channel_axis"] = draw(st.integers(-ndim, ndim - 1))
        else:
            kw["channel_axis"] = draw(st.integers(-ndim - 1, ndim))
    if draw(st.integers(0, 3)) == 0:
        kw["rgb"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["scaling"] = draw(st.sampled_from(SCALINGS + ("bogus",)))
    if draw(st.integers(0, 3)) == 0:
        kw["contrast_limits"] = draw(
            st.one_of(
                st.tuples(floats, floats),
                st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)).map(sorted).map(tuple),
                st.lists(st.floats(-10, 300), min_size=0, max_size=3).map(tuple),
            )
        )
    if draw(st.integers(0, 3)) == 0:
        kw["channels"] = draw(
            st.one_of(
                st.lists(st.integers(-5, 5), min_size=0, max_size=4),
                st.sampled_from([[0], [0, 0, 0], [0, 1, 2], [2, 1, 0], [-1]]),
                # what a typed setting or a careless script may pass
                st.lists(
                    st.one_of(st.floats(-3, 3), st.none(), st.text(max_size=2), st.booleans()),
                    min_size=1,
                    max_size=3,
                ),
                st.one_of(st.integers(-2, 2), st.text(max_size=3), st.just(np.array(1))),
                st.lists(
                    st.lists(st.one_of(st.text(max_size=1), st.none())), min_size=3, max_size=3
                ),
                st.lists(
                    st.lists(st.floats(-2, 2), min_size=1, max_size=5), min_size=3, max_size=3
                ),
            )
        )
    if draw(st.integers(0, 3)) == 0:
        kw["percentiles"] = draw(
            st.one_of(
                st.tuples(st.floats(0, 100), st.floats(0, 100)).map(sorted).map(tuple),
                st.tuples(st.floats(-10, 110), st.floats(-10, 110)),
            )
        )
    return kw


def _plane_shape(shape: tuple[int, ...], kw: dict) -> tuple[int, int]:
    if "channel_axis" in kw:
        rest = list(shape)
        del rest[kw["channel_axis"]]
        return tuple(rest[:2])
    return tuple(shape[:2])


def check_prepare(outcome, arr: np.ndarray, image, kw: dict) -> None:
    before = arr.copy()
    result, err = outcome(prepare_image, image, **kw)
    same = (arr == before).all() if arr.dtype == object else arr.tobytes() == before.tobytes()
    assert same, "input was modified"
    if err is not None:
        assert isinstance(err, ImageError)
        return
    x, rec = result
    assert arr.dtype.kind in "biuf", f"{arr.dtype} accepted"
    assert np.isfinite(arr.astype(np.float64)).all(), "NaN/inf accepted"
    assert x.dtype == np.float32 and x.shape == (3, *_plane_shape(arr.shape, kw))
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    assert rec.input_dtype == str(arr.dtype) and rec.input_shape == arr.shape
    lo, hi = rec.limits
    assert np.isfinite(lo) and np.isfinite(hi)


@given(data=st.data())
def test_prepare_image_fuzz(outcome, data):
    arr = data.draw(images(), label="array")
    image = data.draw(wrapped(arr), label="wrapped")
    kw = data.draw(kwargs(arr.ndim), label="kwargs")
    check_prepare(outcome, arr, image, kw)


# ---------------------------------------------------------------- found examples
# Each case below was found by the fuzzer and is kept as a plain regression test.

REGRESSIONS: list[tuple[str, np.ndarray, dict]] = [
    # timedelta64 counts as np.number: it was cast to float and scaled as intensities
    ("timedelta", np.zeros((1, 1), "m8[s]"), {}),
    ("datetime-nat", np.array("NaT", "M8[s]"), {}),
    # a limit just beyond float32's range became -inf in float32: the output was all NaN
    (
        "limit-beyond-float32",
        np.zeros((1, 1), bool),
        {"contrast_limits": (-3.4028235677973366e38, 0.0)},
    ),
    # float64 values beyond float32's range were reported as "NaN or infinite"
    ("float64-huge", np.array([[0.0, 1e300], [-1e300, 5.0]]), {"scaling": "minmax"}),
    ("float64-max-span", np.array([[-1.7e308, 1.7e308]]), {"scaling": "minmax"}),
    # percentiles outside [0, 100] raised numpy's ValueError
    ("percentiles-out-of-range", np.arange(12.0).reshape(3, 4), {"percentiles": (-5.0, 50.0)}),
    # reversed limits silently gave a flat grey image
    ("contrast-limits-reversed", np.arange(12.0).reshape(3, 4), {"contrast_limits": (9.0, 1.0)}),
    ("contrast-limits-not-numbers", np.arange(12.0).reshape(3, 4), {"contrast_limits": ("a", "b")}),
    # channel entries that are not indices raised ValueError/TypeError from int()
    ("channel-not-a-number", np.zeros((2, 2)), {"channels": ["a"]}),
    ("channel-none", np.zeros((2, 2)), {"channels": [None]}),
    ("channels-scalar", np.zeros((2, 2)), {"channels": 0}),
    ("channels-0d-array", np.zeros((2, 2)), {"channels": np.array(1)}),
    ("mixing-row-text", np.zeros((2, 2, 2)), {"channel_axis": 2, "channels": [["a", "b"]] * 3}),
    # np.ndim() of a ragged channel list raised numpy's ValueError
    (
        "channels-ragged",
        np.zeros((1, 1), bool),
        {"contrast_limits": (), "channels": [[], [], [""]]},
    ),
    ("contrast-limits-ragged", np.zeros((2, 2)), {"contrast_limits": [[1, 2], [3]]}),
    # mixing weights of absurd size overflowed to inf
    (
        "mixing-overflow",
        np.full((2, 2, 2), 3e38, np.float32),
        {"channel_axis": -1, "channels": [[1e300, 1e300]] * 3},
    ),
]


@pytest.mark.parametrize(
    ("arr", "kw"), [c[1:] for c in REGRESSIONS], ids=[c[0] for c in REGRESSIONS]
)
def test_prepare_image_regressions(outcome, arr, kw):
    check_prepare(outcome, arr, arr, kw)


def test_errors_say_what_is_accepted():
    with pytest.raises(ImageError, match="complex"):
        prepare_image(np.ones((4, 4), np.complex64))
    with pytest.raises(ImageError, match="timedelta64.*expected a numeric or boolean"):
        prepare_image(np.zeros((4, 4), "m8[s]"))
    with pytest.raises(ImageError, match="reversed"):
        prepare_image(np.arange(16.0).reshape(4, 4), contrast_limits=(9, 1))
    with pytest.raises(ImageError, match="0 <= low <= high <= 100"):
        prepare_image(np.arange(16.0).reshape(4, 4), percentiles=(50, 101))


def test_values_beyond_float32_are_scaled_not_refused():
    x, rec = prepare_image(np.array([[0.0, 1e300], [-1e300, 5.0]]), scaling="minmax")
    assert np.allclose(x[0], [[0.5, 1.0], [0.0, 0.5]])


@pytest.mark.parametrize("dtype", ACCEPTED)
def test_one_pixel_strips_and_constants(dtype):
    for shape in [(1, 17), (17, 1), (1, 1), (1, 9, 3)]:
        x, _ = prepare_image(np.ones(shape, dtype))
        assert x.shape == (3, *shape[:2]) and np.isfinite(x).all()
        assert np.all(x == x.flat[0])  # a constant image stays constant


def test_dask_matches_numpy():
    arr = np.random.default_rng(0).integers(0, 4000, (2, 9, 13), dtype=np.uint16)
    a, _ = prepare_image(arr, channel_axis=0)
    b, _ = prepare_image(da.from_array(arr, chunks=(1, 4, 4)), channel_axis=0)
    assert np.array_equal(a, b)
