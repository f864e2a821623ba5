import json
import warnings

import numpy as np
import pytest

from napari_featup.analysis import cosine_similarity, fit_pca, make_query, similarity_to_points


def _features_with_known_axes(rng, c=16, n=4000):
    axes = np.linalg.qr(rng.normal(size=(c, c)))[0][:, :3].T  # 3 orthonormal directions
    coef = rng.normal(size=(n, 3)) * np.array([10.0, 5.0, 2.0])
    mean = rng.normal(size=c)
    return axes, mean, coef @ axes + mean + 0.01 * rng.normal(size=(n, c))


def test_pca_recovers_known_components(rng):
    axes, mean, x = _features_with_known_axes(rng)
    pca = fit_pca(x, n_components=3)
    for k in range(3):
        assert abs(abs(pca.components[k] @ axes[k]) - 1) < 1e-3
    assert np.allclose(pca.mean, mean, atol=0.5)
    assert (
        pca.explained_variance_ratio[0]
        > pca.explained_variance_ratio[1]
        > pca.explained_variance_ratio[2]
    )


def test_pca_same_projection_for_lowres_and_highres(rng):
    low = rng.normal(size=(8, 5, 6)).astype(np.float32)
    pca = fit_pca(low)
    high = np.repeat(np.repeat(low, 4, axis=1), 4, axis=2)  # nearest upsampling
    rgb_low, rgb_high = pca.to_rgb(low), pca.to_rgb(high)
    assert rgb_low.shape == (5, 6, 3) and rgb_high.shape == (20, 24, 3)
    assert np.allclose(rgb_high[::4, ::4], rgb_low)


def test_pca_colours_are_robust_to_outliers(rng):
    low = rng.normal(size=(4, 30, 30)).astype(np.float32)
    low[:, 0, 0] = 1e4  # one wild pixel
    pca = fit_pca(low, percentiles=(1, 99))
    rgb = pca.to_rgb(low)
    # min-max scaling would squash everything else into a sliver; percentiles do not.
    assert rgb[1:, 1:].std() > 0.1


def test_pca_subsample_and_few_channels(rng):
    x = rng.normal(size=(2, 200, 200)).astype(np.float32)
    pca = fit_pca(x, max_samples=500)
    assert pca.components.shape == (3, 2)
    assert np.all(pca.components[2] == 0)


@pytest.mark.parametrize("shape", [(8, 6, 6), (384, 6, 6), (8, 1, 1), (5, 1, 7)])
def test_pca_of_constant_features_is_defined(shape):
    # a blank image gives the same vector everywhere (or there is one pixel): sklearn
    # alone divides by the zero total variance and the ratios come out NaN
    x = np.full(shape, 2.5, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from a 0/0 either
        pca = fit_pca(x)
        rgb = pca.to_rgb(x)
    for name, v in pca.__dict__.items():
        assert np.isfinite(v).all(), name
    assert np.all(pca.explained_variance_ratio == 0)
    assert np.allclose(pca.mean, 2.5)
    assert rgb.shape == shape[1:] + (3,) and np.isfinite(rgb).all()
    assert np.all(rgb == rgb[0, 0])  # one colour for one feature vector
    json.dumps(pca.to_dict(), allow_nan=False)  # stored in metadata as strict JSON


def test_cosine_similarity_exact():
    f = np.zeros((2, 1, 3), np.float32)
    f[:, 0, 0] = (1, 0)
    f[:, 0, 1] = (0, 2)
    f[:, 0, 2] = (1, 1)
    s = cosine_similarity(f, np.array([3.0, 0.0]))
    assert np.allclose(s[0], [1, 0, 1 / np.sqrt(2)])


def test_query_mean_and_negatives():
    pos = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.allclose(make_query(pos), [0.5, 0.5, 0])
    q = make_query(pos, np.array([[0, 1.0, 0]]))
    assert np.allclose(q, [0.5, -0.5, 0])
    with pytest.raises(ValueError, match="at least one positive"):
        make_query(np.zeros((0, 3)))


def test_similarity_to_points_peaks_at_point(rng):
    f = rng.normal(size=(8, 10, 12)).astype(np.float32)
    s = similarity_to_points(f, [(3, 4)])
    assert np.unravel_index(s.argmax(), s.shape) == (3, 4)
    assert s[3, 4] == pytest.approx(1.0, abs=1e-5)
    sn = similarity_to_points(f, [(3, 4)], negatives=[(7, 7)])
    assert sn[7, 7] < s[7, 7]
