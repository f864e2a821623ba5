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
