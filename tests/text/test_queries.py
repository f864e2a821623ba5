"""Text heatmaps through the feature field = the same cosine on materialised features;
label maps; the plugin's Qt-free StackText; export and reopen keep the prompts."""

from __future__ import annotations

import numpy as np
import pytest

import napari_featup as nf
from napari_featup.analysis import cosine_similarity
from napari_featup.errors import SettingsError
from napari_featup.io import load_features
from napari_featup.text import (
    NONE_LABEL,
    StackText,
    label_map,
    load_text_encoder,
    parse_prompts,
    query_vectors,
    text_outputs,
    text_similarity,
)

PROMPTS = ["nucleus", "membrane", "background"]


def test_parse_prompts():
    assert parse_prompts("nucleus, membrane\nbackground;  cell  wall ,,") == [
        "nucleus",
        "membrane",
        "background",
        "cell wall",
    ]
    assert parse_prompts(["a", " a ", "", "b"]) == ["a", "b"]
    assert parse_prompts(" , \n") == []


def test_label_map_argmax_threshold_and_legend():
    sims = np.array(
        [
            [[0.9, 0.1], [0.3, 0.2]],
            [[0.2, 0.5], [0.3, 0.1]],
        ],
        np.float32,
    )
    labels, legend = label_map(sims, ["a", "b"])
    np.testing.assert_array_equal(labels, [[1, 2], [1, 1]])  # a tie goes to the first
    assert labels.dtype == np.uint8
    labels, legend = label_map(sims, ["a", "b"], threshold=0.25)
    np.testing.assert_array_equal(labels, [[1, 2], [1, 0]])
    assert [(e.label, e.prompt) for e in legend] == [(0, NONE_LABEL), (1, "a"), (2, "b")]
    assert [e.fraction for e in legend] == [0.25, 0.5, 0.25]
    assert legend[0].colour[3] == 0 and all(e.colour[3] == 1 for e in legend[1:])
    assert len({e.colour for e in legend}) == 3
    big, _ = label_map(np.random.default_rng(0).random((300, 4, 4)), [str(i) for i in range(300)])
    assert big.dtype == np.uint16 and big.max() <= 300
    with pytest.raises(ValueError):
        label_map(sims, ["only one"])


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("clip", "random")


@pytest.mark.parametrize(
    "upsampler,use_norm", [("bilinear", False), ("bilinear", True), ("featup-jbu", None)]
)
def test_similarity_equals_materialised(encoder, upsampler, use_norm):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (37, 45, 3), dtype=np.uint8)
    extra = {"upsampler_weights": "random"} if upsampler == "featup-jbu" else {}
    res = nf.extract_features(
        img, "clip", upsampler, weights="random", device="cpu", use_norm=use_norm, **extra
    )
    emb = encoder.encode(PROMPTS, "plain")
    sims = text_similarity(res, emb)
    assert sims.shape == (3, 37, 45)
    q = query_vectors(emb, bool(res.metadata["use_norm"]))
    for i in range(3):
        want = cosine_similarity(res.highres, q[i])
        np.testing.assert_allclose(sims[i], want, atol=2e-5)
    # the field's public entry points agree
    np.testing.assert_array_equal(res.field.similarity(queries=q), sims)
    with pytest.raises(ValueError):
        res.field.similarity([(1, 1)], queries=q)


def test_use_norm_centres_the_text_vector(encoder):
    emb = encoder.encode(["a", "b"], "plain")
    raw = query_vectors(emb, use_norm=False)
    cen = query_vectors(emb, use_norm=True)
    np.testing.assert_allclose(raw, emb, atol=1e-6)
    np.testing.assert_allclose(cen.mean(axis=1), 0, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(cen, axis=1), 1, atol=1e-6)


def test_text_outputs(clip_result):
    arrays, record = text_outputs(clip_result, "nucleus, background", "plain", threshold=0.0)
    sims, labels = arrays["text_similarity"], arrays["text_labels"]
    assert sims.shape == (2,) + clip_result.highres.shape[1:]
    want, _ = label_map(sims, ["nucleus", "background"], 0.0)
    np.testing.assert_array_equal(labels, want)
    assert record["prompts"] == ["nucleus", "background"] and record["threshold"] == 0.0
    assert record["text_tower"]["random_weights"] is True
    assert [e["prompt"] for e in record["legend"]] == [NONE_LABEL, "nucleus", "background"]
    with pytest.raises(SettingsError):
        text_outputs(clip_result, " , ", "plain")


@pytest.fixture
def stack(clip_result):
    from napari_featup.session import FeatureStack, PlaneGeometry

    geo = PlaneGeometry((), clip_result.highres.shape[1:], [2.0, 2.0], [1.0, 0.0])
    st = FeatureStack("cells", geo, {})
    st.add_planes({(): clip_result})
    return st


def test_stack_text_layers_labels_and_export(stack, encoder, tmp_path):
    from napari_featup.session import export_stack_plane

    text = StackText.build(stack, "nucleus\nmembrane, background", encoder, "plain")
    assert text.prompts == PROMPTS and text.stale == {()}
    layers = text.layer_data(())
    assert [kw["name"] for _, kw, _ in layers] == [f"cells text: {p}" for p in PROMPTS]
    direct = text_similarity(stack.results[()], text.embeddings)
    for i, (data, kw, ltype) in enumerate(layers):
        assert ltype == "image" and kw["scale"] == [2.0, 2.0] and kw["translate"] == [1.0, 0.0]
        # a small image: the stack's basis is complete, the compact answer exact
        np.testing.assert_allclose(data, direct[i], atol=1e-5)
        assert kw["metadata"]["napari_featup"]["prompt"] == PROMPTS[i]
        assert kw["metadata"]["napari_featup"]["random_weights"] is True
        assert kw["metadata"]["napari_featup"]["similarity_error_bound"] == 0.0
    (labels, kw, ltype), legend = text.label_layer_data(0.05)
    assert ltype == "labels" and kw["name"] == "cells text labels"
    np.testing.assert_array_equal(labels, label_map(text.maps, PROMPTS, 0.05)[0])
    assert kw["colormap"][1] == legend[1].colour and kw["features"]["prompt"][3] == "background"

    out = export_stack_plane(tmp_path / "cells.npz", stack, ())
    back = load_features(out)
    assert back.metadata["text"]["prompts"] == PROMPTS
    assert back.metadata["text"]["threshold"] == 0.05
    assert back.metadata["text"]["text_tower"]["random_weights"] is True


def test_stack_text_keeps_maps_of_unchanged_prompts(stack, encoder, monkeypatch):
    from napari_featup.text import queries

    first = StackText.build(stack, ["nucleus", "membrane"], encoder, "plain")
    first.update(())
    asked = []
    real = queries.stack_text_similarity

    def spy(stack, idx, emb):
        asked.append(len(emb))
        return real(stack, idx, emb)

    monkeypatch.setattr(queries, "stack_text_similarity", spy)
    second = StackText.build(stack, ["membrane", "background"], encoder, "plain", previous=first)
    assert second.stale == {()}
    maps = second.update(())
    assert asked == [1]  # only "background" was computed
    np.testing.assert_array_equal(maps[0], first.maps[1])
    direct = text_similarity(stack.results[()], second.embeddings)
    np.testing.assert_allclose(maps, direct, atol=1e-5)
    assert second.stale == set()
    # other templates give other vectors: nothing is reused
    third = StackText.build(stack, ["membrane"], encoder, ["a {}"], previous=second)
    assert third.done == [set()]


@pytest.mark.parametrize(
    "upsampler,use_norm", [("featup-jbu", False), ("featup-jbu", True), ("bilinear", False)]
)
def test_stack_text_answers_from_the_compact_field(encoder, upsampler, use_norm, monkeypatch):
    """A text query in the plugin costs a click: no upsampler pass once the plane's compact
    field exists, and with a basis smaller than the channels each map stays within the
    error it records of the exact (materialised) cosine. Bilinear features, whose exact
    projection is a resize, are answered exactly instead."""
    from napari_featup.compact import fit_basis
    from napari_featup.field import FeatureField
    from napari_featup.session import FeatureStack, PlaneGeometry

    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    extra = {"upsampler_weights": "random"} if upsampler == "featup-jbu" else {}
    res = nf.extract_features(
        img, "clip", upsampler, weights="random", device="cpu", use_norm=use_norm, **extra
    )
    st = FeatureStack("cells", PlaneGeometry((), (48, 64), [1.0, 1.0], [0.0, 0.0]), {})
    st.add_planes({(): res}, basis=fit_basis([res.field.moment()], 8))
    st.compact(())  # made by the run's first click or text query

    def no_pass(*_, **__):
        raise AssertionError("the upsampler ran for a text query")

    if upsampler == "featup-jbu":
        monkeypatch.setattr(FeatureField, "project", no_pass)
    text = StackText.build(st, PROMPTS, encoder, "plain")
    maps = text.update(())
    q = query_vectors(text.embeddings, bool(res.metadata["use_norm"]))
    for i in range(3):
        bound = text.bounds[i][()]
        err = np.abs(maps[i] - cosine_similarity(res.highres, q[i])).max()
        if upsampler == "bilinear":
            assert bound == 0.0 and err < 2e-5, err
        else:
            assert 0 < err <= bound + 1e-5, (err, bound)
        meta = text.layer_data(())[i][1]["metadata"]["napari_featup"]
        assert meta["similarity_error_bound"] == bound
