"""Fixtures for the text-query tests: random weights everywhere, and OpenAI's
``ViT-B-16.pt`` format regenerated from seeded weights (shared/fixtures, about 20 s)."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("open_clip")


@pytest.fixture(scope="session")
def openai_clip_file(fixtures_dir, tmp_path_factory):
    """OpenAI's TorchScript CLIP archive (both towers) with the fixture's seeded weights."""
    env = os.environ.get("NAPARI_FEATUP_CLIP_PT")  # a file made earlier, to save 20 s
    if env and os.path.isfile(env):
        return env
    folder = fixtures_dir / "featup-backbones"
    spec = importlib.util.spec_from_file_location("fixture_weights", folder / "weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cases = json.loads((folder / "cases.json").read_text())
    out = tmp_path_factory.mktemp("clip-weights")
    return str(mod.regenerate(cases["backbones"]["clip"]["weights"], out))


@pytest.fixture(scope="session")
def clip_result():
    """clip features (random weights, bilinear) of a small two-region image, with the
    full-resolution features materialised."""
    import napari_featup as nf

    rng = np.random.default_rng(0)
    img = np.zeros((40, 56, 3), np.uint8)
    img[:, :28] = (200, 40, 40)
    img[:, 28:] = (30, 60, 220)
    img = img + rng.integers(0, 20, img.shape, dtype=np.uint8)
    return nf.extract_features(img, "clip", "bilinear", weights="random", device="cpu")
