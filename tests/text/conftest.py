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


# ------------------------------------------------------------------ SigLIP 2
#: a stand-in for SigLIP 2's Gemma tokenizer (the real one is 34 MB on the Hugging Face
#: Hub, unreachable here): a word-level vocabulary in the same files and the same Gemma
#: ids for <pad>, <eos>, <bos>, <unk>. It tests wiring only; it is never the model's.
STAND_IN_WORDS = ["a", "an", "the", "of", "this", "is", "there", "in", "photo", "picture"]
STAND_IN_WORDS += ["image", "scene", "nucleus", "membrane", "background", "cell", "wall"]
STAND_IN_WORDS += ["mitochondrion", "cat", "blurry"]
SIGLIP2_REPO = "timm/ViT-B-16-SigLIP2"


def write_stand_in_tokenizer(folder) -> None:
    """tokenizer.json and tokenizer_config.json of the stand-in tokenizer, in ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + STAND_IN_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
        "model_max_length": 64,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def make_siglip2_folder(folder, seed: int = 3):
    """A copy of the Hugging Face repository timm/ViT-B-16-SigLIP2 with seeded weights in
    ``folder``: open_clip's ViT-B-16-SigLIP2 (both towers, saved as float16 to halve the
    1.5 GB), open_clip_config.json and the stand-in tokenizer; open_clip reads it as
    ``local-dir:<folder>``. Also used by benchmarks/bench_siglip_text.py."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    write_stand_in_tokenizer(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model("ViT-B-16-SigLIP2", pretrained=None)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    del model
    save_file(state, str(folder / "open_clip_model.safetensors"))
    cfg = {"model_cfg": open_clip.get_model_config("ViT-B-16-SigLIP2"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="session")
def siglip2_folder(tmp_path_factory):
    """:func:`make_siglip2_folder` once per session."""
    return make_siglip2_folder(tmp_path_factory.mktemp("siglip2") / "ViT-B-16-SigLIP2")


def hub_snapshot(cache, repo: str, files: dict) -> None:
    """A Hugging Face cache entry for ``repo`` at revision main: name -> source file."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text("0" * 40)
    for name, src in files.items():
        (snap / name).symlink_to(src)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test, and no network."""
    import huggingface_hub
    from huggingface_hub import constants

    def offline(*args, **kwargs):
        raise OSError("no network in this test")

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    return cache


@pytest.fixture
def siglip2_tokenizer_cached(hf_cache, tmp_path):
    """The stand-in tokenizer in the Hugging Face cache (no weights there)."""
    src = tmp_path / "tok"
    write_stand_in_tokenizer(src)
    files = {n: src / n for n in ("tokenizer.json", "tokenizer_config.json")}
    hub_snapshot(hf_cache, SIGLIP2_REPO, files)
    return hf_cache


@pytest.fixture
def siglip2_cached(siglip2_folder, hf_cache):
    """The seeded SigLIP 2 file and the stand-in tokenizer in the Hugging Face cache, as
    ``napari-featup download siglip2-b-dense`` leaves them."""
    names = ("open_clip_model.safetensors", "tokenizer.json", "tokenizer_config.json")
    hub_snapshot(hf_cache, SIGLIP2_REPO, {n: siglip2_folder / n for n in names})
    return hf_cache
