"""napari-featup extract --text: heatmaps and label map beside the features, prompts in
the metadata; clear refusals before any work."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup.cli import EXIT_OK, EXIT_USAGE, main
from napari_featup.io import load_arrays, load_features


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "img.npy"
    np.save(path, rng.integers(0, 255, (33, 47, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("suffix", [".npz", ".zarr"])
def test_extract_text_writes_heatmaps_and_labels(image_file, tmp_path, suffix, capsys):
    out = tmp_path / f"f{suffix}"
    argv = [
        "extract", str(image_file), "-b", "clip", "--weights", "random", "-q", "-o", str(out),
        "--text", "nucleus", "--text", "background", "--text-templates", "plain",
        "--text-threshold", "0.0",
    ]  # fmt: skip
    assert main(argv) == EXIT_OK
    arrays, meta = load_arrays(out)
    assert arrays["text_similarity"].shape == (2, 33, 47)
    assert arrays["text_labels"].shape == (33, 47) and arrays["text_labels"].max() <= 2
    text = meta["text"]
    assert text["prompts"] == ["nucleus", "background"] and text["templates"] == "plain"
    assert text["threshold"] == 0.0 and text["text_tower"]["random_weights"] is True
    # the label map is the argmax of the saved heatmaps (0 where all are below 0.0)
    sims = arrays["text_similarity"]
    want = np.where(sims.max(0) < 0.0, 0, sims.argmax(0) + 1)
    np.testing.assert_array_equal(arrays["text_labels"], want)
    # reopening keeps the prompts
    assert load_features(out).metadata["text"]["prompts"] == ["nucleus", "background"]
    # and the reader shows the heatmaps and the label map as layers
    from napari_featup._reader import read_features

    layers = {kw["name"]: (data, kw, kind) for data, kw, kind in read_features(out)}
    for i, prompt in enumerate(["nucleus", "background"]):
        data, kw, kind = layers[f"f text: {prompt}"]
        assert kind == "image" and kw["metadata"]["napari_featup"]["prompt"] == prompt
        np.testing.assert_array_equal(data, sims[i])
    data, kw, kind = layers["f text labels"]
    assert kind == "labels" and kw["features"]["prompt"] == ["none of these", *text["prompts"]]
    np.testing.assert_array_equal(data, arrays["text_labels"])
    assert kw["scale"] == layers["f text: nucleus"][1]["scale"]


def test_text_refusals(image_file, tmp_path, capsys):
    base = ["extract", str(image_file), "--weights", "random", "-q", "--text", "nucleus"]
    assert main(base + ["-b", "dinov2", "-o", str(tmp_path / "a.npz")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no text tower for backbone 'dinov2'" in err and "clip, maskclip" in err
    assert main(base + ["-b", "clip", "-o", str(tmp_path / "a.npy")]) == EXIT_USAGE
    assert ".npz, .zarr or .tif" in capsys.readouterr().err
    assert not any(tmp_path.glob("a.*"))


def test_reader_rejects_misshapen_text_arrays(image_file, tmp_path):
    """A hand-edited file whose heatmaps are not (N, H, W) gets a message, not a crash."""
    from napari_featup import FeatureFileError
    from napari_featup._reader import read_features
    from napari_featup.io import save_features

    out = tmp_path / "f.npz"
    argv = ["extract", str(image_file), "-b", "clip", "--weights", "random", "-q"]
    assert main(argv + ["-o", str(out), "--text", "cell", "--text-templates", "plain"]) == 0
    res = load_features(out)
    bad = tmp_path / "bad.npz"
    save_features(bad, res, extra_arrays={"text_similarity": np.zeros((33, 47), np.float32)})
    with pytest.raises(FeatureFileError, match="text_similarity.*one per prompt"):
        read_features(bad)
