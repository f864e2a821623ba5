"""FeatureField: query vectors cost one projection and match the dense computation."""

import numpy as np
import pytest

import napari_featup as nf
from napari_featup.analysis import cosine_similarity


@pytest.mark.parametrize("upsampler", ["bilinear", "jbu-classic"])
def test_query_vectors_match_materialised_features(rgb_image, rng, upsampler):
    res = nf.extract_features(rgb_image, "dino16", upsampler, weights="random")
    queries = rng.normal(size=(3, res.lowres.shape[0])).astype(np.float32)
    sims = res.field.query_similarity(queries)
    assert sims.shape == (3,) + rgb_image.shape[:2] and sims.dtype == np.float32
    for q, s in zip(queries, sims):
        np.testing.assert_allclose(s, cosine_similarity(res.highres, q), atol=1e-4)
    np.testing.assert_allclose(res.field.query_similarity(queries[0]), sims[0], atol=1e-6)
    assert np.all(res.field.query_similarity(np.zeros_like(queries[0])) == 0)
    with pytest.raises(ValueError, match="channels"):
        res.field.query_similarity(queries[:, :5])


@pytest.mark.parametrize(
    "upsampler, kwargs",
    [
        ("bilinear", {}),
        ("jbu-classic", {}),
        ("featup-jbu", {"upsampler_weights": "random"}),
        ("anyup", {"upsampler_weights": "random"}),  # through its attention kernels
        ("jafar", {"upsampler_weights": "random"}),
        (
            "featup-implicit",
            {"upsampler_options": dict(steps=2, views=4, pca_views=4, batch=2, view_batch=4)},
        ),
    ],
)
def test_compact_similarity_is_within_its_stated_bound(upsampler, kwargs):
    """The compact form (coordinates in a basis smaller than C, exact norms and
    residuals) answers a query within the bound it states, and exactly with a
    complete basis: the materialised features are the reference."""
    from skimage import data

    from napari_featup.analysis import similarity_to_points
    from napari_featup.compact import fit_basis, similarity

    img = data.astronaut()[::4, ::4][:84, :98]  # 6 x 7 cells of 14 px
    res = nf.extract_features(img, "dinov2", upsampler, weights="random", device="cpu", **kwargs)
    norms = np.linalg.norm(res.highres, axis=0)
    cases = [([(10, 12)], []), ([(10, 12), (70, 80)], [(40, 60)])]
    for rank, loosest in [(8, 3.0), (32, 0.25)]:
        small = res.field.compact(fit_basis([res.field.moment()], rank))
        assert small.coeffs.shape == (rank, 84, 98)
        assert small.nbytes < res.highres.nbytes * (rank + 2) / 384 + 1
        np.testing.assert_allclose(small.norms.numpy(), norms, rtol=1e-4)
        for pos, neg in cases:
            exact = similarity_to_points(res.highres, pos, neg)
            sims, bound = similarity(small, small.query(pos, neg))
            err = np.abs(sims - exact).max()
            assert err <= bound + 1e-5, (upsampler, rank, err, bound)
            assert 0 < bound < loosest, (upsampler, rank, bound)
    full = res.field.compact(fit_basis([res.field.moment()], res.lowres.shape[0]))  # identity
    assert full.basis.exact
    for pos, neg in cases:
        sims, bound = similarity(full, full.query(pos, neg))
        assert bound == 0
        np.testing.assert_allclose(sims, similarity_to_points(res.highres, pos, neg), atol=2e-5)
