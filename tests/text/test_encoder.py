"""encode_text: shapes, unit norm, templates, weights sources, and exactness against
open_clip's own CLIP model on OpenAI-format weights (fixture, seeded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.errors import (
    BackboneError,
    SettingsError,
    WeightsFileError,
    WeightsUnavailableError,
)
from napari_featup.text import (
    IMAGENET_TEMPLATES,
    MASKCLIP_TEMPLATES,
    has_text_tower,
    load_text_encoder,
    resolve_templates,
    text_backbones,
)
from napari_featup.text import encoder as encoder_mod


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def random_encoder():
    return load_text_encoder("clip", "random")


def test_template_sets():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert len(IMAGENET_TEMPLATES) == 80 and len(MASKCLIP_TEMPLATES) == 85
    # the same sentences (and order) as open_clip's copy of OpenAI's notebook
    assert [t.replace("{}", "x") for t in IMAGENET_TEMPLATES] == [
        f("x") for f in OPENAI_IMAGENET_TEMPLATES
    ]
    assert MASKCLIP_TEMPLATES[:80] == IMAGENET_TEMPLATES
    assert MASKCLIP_TEMPLATES[80] == "there is a {} in the scene."
    assert resolve_templates("plain") == resolve_templates(None) == ("{}",)
    assert resolve_templates(["an image of {}."]) == ("an image of {}.",)
    for bad in ("fancy", [], ["no placeholder"]):
        with pytest.raises(SettingsError):
            resolve_templates(bad)


def test_shapes_and_unit_norm(random_encoder):
    q = random_encoder.encode(["nucleus", "membrane", "background"], "plain")
    assert q.shape == (3, 512) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    assert random_encoder.encode("nucleus", "plain").shape == (1, 512)
    # nf.encode_text is the same (cached) encoder; maskclip shares clip's text tower
    np.testing.assert_array_equal(nf.encode_text("nucleus", "clip", "random", "plain"), q[:1])
    np.testing.assert_array_equal(nf.encode_text("nucleus", "maskclip", "random", "plain"), q[:1])
    with pytest.raises(ValueError):
        random_encoder.encode([], "plain")


def test_templates_are_averaged_as_clip_does(random_encoder):
    tmpl = ["a photo of a {}.", "a drawing of the {}.", "{} under a microscope"]
    got = random_encoder.encode(["cell wall"], tmpl)[0]
    sent = random_encoder.sentence_embeddings([t.replace("{}", "cell wall") for t in tmpl])
    want = _unit(_unit(sent).mean(0)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    plain = random_encoder.encode(["cell wall"], "plain")[0]
    assert float(plain @ got) < 0.9999  # templates change the vector


def test_random_weights_are_seeded_and_flagged(random_encoder):
    meta = random_encoder.metadata("plain")
    assert meta["random_weights"] is True and "random" in meta["weights"]
    assert meta["same_checkpoint"] is True and meta["templates"] == "plain"
    fresh = encoder_mod.build_tower(encoder_mod.TEXT_TOWERS["clip"])
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, random_encoder.tower.state_dict()[k], rtol=0, atol=0)


def test_backbones_without_text_tower():
    assert text_backbones() == ["clip", "maskclip", "siglip2-b-dense"]
    assert has_text_tower("clip") and not has_text_tower("dinov2")
    with pytest.raises(BackboneError, match="no text tower for backbone 'dinov2'.*clip, maskclip"):
        load_text_encoder("dinov2", "random")
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_text_encoder("no-such-backbone", "random")
    # siglip2-b's patch tokens are not in its text tower's space: siglip2-b-dense's are
    assert not has_text_tower("siglip2-b")
    with pytest.raises(BackboneError, match="'siglip2-b'.*Use 'siglip2-b-dense'"):
        load_text_encoder("siglip2-b", "random")
    import open_clip

    from napari_featup.text.encoder import SIGLIP2_OPEN_CLIP

    # the open_clip model paired with siglip2-b-dense has its image tower's architecture
    cfg = open_clip.get_model_config(SIGLIP2_OPEN_CLIP)
    spec = nf.backbones.get_spec("siglip2-b-dense")
    assert cfg["vision_cfg"]["timm_model_name"] == spec.timm_name
    assert cfg["embed_dim"] == spec.dim
    assert encoder_mod.hub_repo("siglip2-b-dense") == "timm/ViT-B-16-SigLIP2"


def test_loaded_backbone_brings_its_weights(random_encoder):
    bb = nf.load_backbone("clip", weights="random", device="cpu")
    assert load_text_encoder(bb).tower is random_encoder.tower
    with pytest.raises(BackboneError, match="image tower's checkpoint"):
        load_text_encoder(bb, weights="pretrained")


def test_image_only_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(2, 3)}, str(path))
    with pytest.raises(WeightsFileError, match="no CLIP text tower"):
        load_text_encoder("clip", path)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_text_encoder("clip", tmp_path / "missing.pt")


def test_offline_pretrained_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert encoder_mod.hub_repo("clip") == "timm/vit_base_patch16_clip_224.openai"
    with pytest.raises(WeightsUnavailableError) as info:
        load_text_encoder("clip", "pretrained")
    msg = str(info.value)
    assert "napari-featup download clip" in msg and str(tmp_path) in msg
    assert "open_clip_model.safetensors" in msg


# ------------------------------------------------------------- exactness (fixture)
SENTENCES = [
    "a photo of a cat.",
    "nucleus",
    "there is a mitochondrion in the scene.",
    "A  Blurry   photo of the <b>membrane</b>!",  # whitespace and markup, cleaned alike
    " ".join(["very"] * 90) + " long",  # beyond 77 tokens: truncated alike
]


@pytest.fixture(scope="module")
def openai_pair(openai_clip_file):
    """(our encoder, open_clip's CLIP) on the same OpenAI-format file."""
    import open_clip

    ref = open_clip.load_openai_model(openai_clip_file, device="cpu").eval()
    return load_text_encoder("clip", openai_clip_file), ref


def test_sentences_match_open_clip(openai_pair):
    import open_clip

    ours, ref = openai_pair
    assert ours.metadata()["text_tower_file"] == ours.metadata()["image_tower_file"]
    # a backbone read from the file brings the file: the same (cached) text tower
    bb = nf.load_backbone("clip", weights=ours.source["weights"], device="cpu")
    assert load_text_encoder(bb).tower is ours.tower
    with torch.inference_mode():
        want = ref.encode_text(open_clip.tokenize(SENTENCES))
    got = ours.sentence_embeddings(SENTENCES)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-5, err


def test_templated_prompt_matches_clip_recipe(openai_pair):
    """CLIP's zero-shot recipe run on open_clip's model: encode, L2, mean, L2 (every
    8th MaskCLIP template, to stay quick; benchmarks/bench_text.py runs all 85)."""
    import open_clip

    ours, ref = openai_pair
    tmpl = MASKCLIP_TEMPLATES[::8]
    sentences = [t.replace("{}", "nucleus") for t in tmpl]
    with torch.inference_mode():
        want = _unit(_unit(ref.encode_text(open_clip.tokenize(sentences))).mean(0))
    got = ours.encode(["nucleus"], tmpl)[0]
    assert float(np.abs(got - want.numpy()).max()) < 1e-5
