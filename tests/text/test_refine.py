"""Refining the plugin's fast text maps (compact field) into the exact cosine, Qt-free."""

from __future__ import annotations

import numpy as np
import pytest

import napari_featup as nf
from napari_featup.analysis import cosine_similarity
from napari_featup.compact import fit_basis
from napari_featup.session import FeatureStack, PlaneGeometry
from napari_featup.text import StackText, load_text_encoder, query_vectors, text_similarity
from napari_featup.text.refine import apply_refinement, exact_maps, plan_refinement, refine_plane

PROMPTS = ["nucleus", "membrane", "background"]


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("clip", "random")


def _stack(upsampler: str, seed: int = 5, rank: int = 8) -> FeatureStack:
    img = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    extra = {"upsampler_weights": "random"} if upsampler == "featup-jbu" else {}
    res = nf.extract_features(img, "clip", upsampler, weights="random", device="cpu", **extra)
    st = FeatureStack("cells", PlaneGeometry((), (40, 48), [1.0, 1.0], [0.0, 0.0]), {})
    st.add_planes({(): res}, basis=fit_basis([res.field.moment()], rank))
    return st


def test_refinement_gives_the_exact_cosine(encoder):
    st = _stack("featup-jbu")
    text = StackText.build(st, PROMPTS, encoder, "plain")
    assert plan_refinement(text) is None  # nothing computed yet
    fast = text.update(()).copy()
    assert all(b[()] > 0 for b in text.bounds)
    ref = plan_refinement(text)
    assert ref.prompts == (0, 1, 2) and ref.plane == ()
    maps = exact_maps(ref)  # what the worker runs
    res = st.results[()]
    np.testing.assert_array_equal(maps, text_similarity(res, text.embeddings))
    q = query_vectors(text.embeddings, bool(res.metadata["use_norm"]))
    for i in range(3):  # the same cosine on the materialised features
        np.testing.assert_allclose(maps[i], cosine_similarity(res.highres, q[i]), atol=2e-5)
    assert np.abs(fast - maps).max() > 1e-4  # the fast maps were not exact
    assert apply_refinement(ref, maps)
    np.testing.assert_array_equal(text.update(()), maps)
    assert all(b[()] == 0.0 for b in text.bounds)
    meta = text.layer_data(())[0][1]["metadata"]["napari_featup"]
    assert meta["similarity_error_bound"] == 0.0
    assert plan_refinement(text) is None  # exact now
    labels, _ = text.labels(None)
    np.testing.assert_array_equal(labels, maps.argmax(axis=0) + 1)


def test_refinement_of_replaced_features_writes_nothing(encoder):
    st = _stack("featup-jbu")
    text = StackText.build(st, PROMPTS[:2], encoder, "plain")
    fast = text.update(()).copy()
    ref = plan_refinement(text)
    maps = exact_maps(ref)
    other = _stack("featup-jbu", seed=6)
    st.results[()] = other.results[()]  # a run replaced the plane meanwhile
    assert not ref.current() and not apply_refinement(ref, maps)
    np.testing.assert_array_equal(text.maps, fast)
    assert all(b[()] > 0 for b in text.bounds)


def test_only_inexact_maps_are_refined(encoder):
    st = _stack("bilinear")  # exact at once (a resize): nothing to refine
    text = StackText.build(st, PROMPTS[:2], encoder, "plain")
    text.update(())
    assert plan_refinement(text) is None and not refine_plane(text)
    st = _stack("featup-jbu")
    first = StackText.build(st, PROMPTS[:2], encoder, "plain")
    first.update(())
    assert refine_plane(first)
    second = StackText.build(st, PROMPTS, encoder, "plain", previous=first)
    second.update(())
    assert plan_refinement(second).prompts == (2,)  # the kept maps are exact already
