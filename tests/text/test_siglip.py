"""SigLIP 2 text queries: siglip2-b-dense (patch tokens through the MAP head) and its text
tower, checked against timm's head and open_clip's own SigLIP 2 model on the same file
(seeded weights, a stand-in tokenizer: wiring, never quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.backbones.siglip import map_head_dense
from napari_featup.errors import BackboneError, WeightsUnavailableError
from napari_featup.text import TEXT_PARTNERS, has_text_tower, load_text_encoder

SENTENCES = [
    "a photo of the nucleus.",
    "There is a Mitochondrion in the scene!",  # case and punctuation, cleaned alike
    "membrane",
    "zebra",  # out of the stand-in vocabulary: <unk>
    " ".join(["cell"] * 80),  # beyond 64 tokens: truncated alike
]


def _image(seed=0, size=(48, 64)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, *size, generator=g)


@pytest.fixture(scope="module")
def dense_random():
    return nf.load_backbone("siglip2-b-dense", weights="random", device="cpu")


@pytest.fixture(scope="module")
def open_clip_pair(siglip2_folder):
    """open_clip's SigLIP 2 and its tokenizer, read by open_clip from the folder."""
    import open_clip

    model = open_clip.create_model(f"local-dir:{siglip2_folder}", pretrained=None)
    model.eval()
    return model, open_clip.get_tokenizer(f"local-dir:{siglip2_folder}")


def test_listed_with_a_text_tower_and_siglip2_b_points_to_it():
    assert "siglip2-b-dense" in nf.list_backbones("modern")
    assert nf.text_backbones() == ["clip", "maskclip", "siglip2-b-dense"]
    assert has_text_tower("siglip2-b-dense") and not has_text_tower("siglip2-b")
    spec = nf.backbones.get_spec("siglip2-b-dense")
    assert (spec.dim, spec.stride, spec.mean) == (768, 16, (0.5, 0.5, 0.5))
    assert TEXT_PARTNERS["siglip2-b"] == "siglip2-b-dense"
    with pytest.raises(BackboneError, match="Use 'siglip2-b-dense'"):
        load_text_encoder("siglip2-b", "random")


def test_each_dense_token_is_the_map_head_attending_to_it_alone(dense_random):
    """timm's own AttentionPoolLatent, masked to one token, gives that token's feature."""
    model = dense_random.model
    head = model.attn_pool
    tokens = torch.randn(2, 7, 768, generator=torch.Generator().manual_seed(1))
    dense = map_head_dense(head, tokens)
    for i in range(tokens.shape[1]):
        mask = torch.full((2, 1, 1, 7), float("-inf"))
        mask[..., i] = 0.0
        with torch.no_grad():
            want = head(tokens, attn_mask=mask)
        torch.testing.assert_close(dense[:, i], want, rtol=1e-5, atol=1e-5)
    # equal tokens: every dense token is the pooled embedding
    same = tokens[:, :1].expand(-1, 5, -1)
    with torch.no_grad():
        pooled = head(same)
    torch.testing.assert_close(map_head_dense(head, same), pooled[:, None].expand(-1, 5, -1))


def test_dense_features_are_the_head_on_the_normed_patch_tokens(dense_random):
    from napari_featup.backbones._timm import dense_features

    x = _image()
    got = dense_random(x)
    assert got.shape == (1, 768, 3, 4)
    with torch.no_grad():
        x05 = dense_random._renormalise(x)
        grid = dense_features(dense_random.model, x05)
        tokens = grid.flatten(2).transpose(1, 2)
        want = map_head_dense(dense_random.model.attn_pool, tokens).transpose(1, 2)
    torch.testing.assert_close(got, want.reshape(1, 768, 3, 4))
    siglip2_b = nf.load_backbone("siglip2-b", weights="random", device="cpu")
    assert not torch.allclose(siglip2_b(x), got)  # another space


def test_image_tower_from_open_clips_file(siglip2_folder, open_clip_pair):
    """Both towers from one file: our image tower is open_clip's trunk, value for value,
    and its pooled output is open_clip's encode_image."""
    ref, _ = open_clip_pair
    path = siglip2_folder / "open_clip_model.safetensors"
    bb = nf.load_backbone("siglip2-b-dense", weights=path, device="cpu")
    trunk = ref.visual.trunk.state_dict()
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, trunk[k], rtol=0, atol=0)
    x = _image(2, (224, 224))
    with torch.no_grad():
        want = ref.encode_image(bb._renormalise(x))
        pooled = bb.model.forward_head(bb.model.forward_features(bb._renormalise(x)))
    torch.testing.assert_close(pooled, want, rtol=1e-5, atol=1e-5)


def test_text_tower_matches_open_clip_on_the_same_file(siglip2_folder, open_clip_pair):
    ref, ref_tok = open_clip_pair
    path = siglip2_folder / "open_clip_model.safetensors"
    enc = load_text_encoder("siglip2-b-dense", path)
    ids = enc.tokenizer(SENTENCES)
    assert ids.shape == (len(SENTENCES), 64)
    torch.testing.assert_close(ids, ref_tok(SENTENCES), rtol=0, atol=0)
    with torch.inference_mode():
        want = ref.encode_text(ref_tok(SENTENCES))
    got = enc.sentence_embeddings(SENTENCES)
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 1e-5, err
    q = enc.encode(["nucleus", "membrane"], "plain")
    assert q.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    meta = enc.metadata("plain")
    assert meta["same_checkpoint"] and meta["text_tower_file"] == meta["image_tower_file"]
    assert str(siglip2_folder) in meta["tokenizer"] and not meta["random_weights"]
    # a backbone read from the file brings it: the same (cached) text tower
    bb = nf.load_backbone("siglip2-b-dense", weights=path, device="cpu")
    assert load_text_encoder(bb).tower is enc.tower


def test_pretrained_reads_both_towers_from_the_hugging_face_cache(siglip2_folder, siglip2_cached):
    names = ("open_clip_model.safetensors",)
    assert nf.backbones.pretrained_cached("siglip2-b-dense")
    bb = nf.load_backbone("siglip2-b-dense", weights="pretrained", device="cpu", cache=False)
    from_file = nf.load_backbone("siglip2-b-dense", weights=siglip2_folder / names[0], device="cpu")
    x = _image(4)
    torch.testing.assert_close(bb(x), from_file(x), rtol=0, atol=0)
    enc = load_text_encoder("siglip2-b-dense", "pretrained")
    meta = enc.metadata()
    assert "timm/ViT-B-16-SigLIP2" in meta["checkpoint"]
    assert str(siglip2_cached) in meta["text_tower_file"]
    assert "open_clip_model.safetensors" in meta["image_tower_file"]
    ours = load_text_encoder("siglip2-b-dense", siglip2_folder / names[0])
    np.testing.assert_array_equal(enc.encode("nucleus"), ours.encode("nucleus"))


def test_offline_without_files_says_what_to_do(hf_cache, monkeypatch):
    from napari_featup.text import encoder as encoder_mod

    monkeypatch.setattr(encoder_mod, "_CACHE", {})
    with pytest.raises(WeightsUnavailableError) as info:
        load_text_encoder("siglip2-b-dense", "random")  # random weights, but no tokenizer
    msg = str(info.value)
    assert "tokenizer.json" in msg and "timm/ViT-B-16-SigLIP2" in msg
    assert "napari-featup download siglip2-b-dense" in msg and str(hf_cache) in msg
    with pytest.raises(WeightsUnavailableError, match="open_clip_model.safetensors"):
        nf.load_backbone("siglip2-b-dense", weights="pretrained", device="cpu", cache=False)


def test_random_text_tower_needs_only_the_tokenizer(siglip2_tokenizer_cached):
    enc = load_text_encoder("siglip2-b-dense", "random")
    assert enc.random_weights and enc.dim == 768
    tmpl = ["a photo of a {}.", "{} in the scene"]
    got = enc.encode(["cell wall"], tmpl)[0]
    sent = enc.sentence_embeddings([t.replace("{}", "cell wall") for t in tmpl])
    unit = torch.nn.functional.normalize
    want = unit(unit(sent, dim=-1).mean(0), dim=0).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_text_similarity_on_siglip2_dense_features(siglip2_folder):
    """A text query on siglip2-b-dense features equals the materialised computation,
    and the features' metadata finds the same text tower."""
    from napari_featup.analysis import cosine_similarity
    from napari_featup.text import query_vectors, text_similarity
    from napari_featup.text.queries import encoder_for

    path = siglip2_folder / "open_clip_model.safetensors"
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    res = nf.extract_features(img, "siglip2-b-dense", "bilinear", weights=path, device="cpu")
    enc = encoder_for(res.metadata)
    assert enc.tower is load_text_encoder("siglip2-b-dense", path).tower
    emb = enc.encode(["nucleus", "background"], "plain")
    sims = text_similarity(res, emb)
    q = query_vectors(emb, bool(res.metadata["use_norm"]))
    for i in range(2):
        np.testing.assert_allclose(sims[i], cosine_similarity(res.highres, q[i]), atol=2e-5)


def test_cli_extract_text_and_download(siglip2_folder, hf_cache, monkeypatch, tmp_path, capsys):
    """`extract --text` on siglip2-b-dense, and `download` fetching both towers and the
    tokenizer into the cache (a stand-in hub serving the seeded folder)."""
    import huggingface_hub

    from napari_featup.cli import EXIT_OK, main
    from napari_featup.io import load_arrays

    from .conftest import SIGLIP2_REPO, hub_snapshot

    served = []

    def fake_download(repo_id, filename, cache_dir=None, **kwargs):
        src = siglip2_folder / filename
        if repo_id != SIGLIP2_REPO or not src.is_file():
            raise OSError(f"404: {repo_id}/{filename}")
        hub_snapshot(Path(cache_dir), repo_id, {filename: src})
        served.append(filename)
        return str(Path(cache_dir) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
                   / ("0" * 40) / filename)  # fmt: skip

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    argv = ["download", "siglip2-b-dense", "--no-jbu", "--no-learned"]
    assert main(argv) == EXIT_OK
    assert "text tower siglip2-b-dense" in capsys.readouterr().out
    assert sorted(set(served)) == [
        "open_clip_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]  # special_tokens_map.json is optional (not in this copy)
    assert nf.backbones.pretrained_cached("siglip2-b-dense")

    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(2).integers(0, 255, (33, 47, 3), dtype=np.uint8))
    out = tmp_path / "f.npz"
    argv = [
        "extract", str(img), "-b", "siglip2-b-dense", "-q", "-o", str(out),
        "--text", "nucleus", "--text", "background", "--text-templates", "plain",
    ]  # fmt: skip
    assert main(argv) == EXIT_OK
    arrays, meta = load_arrays(out)
    assert arrays["text_similarity"].shape == (2, 33, 47)
    tower = meta["text"]["text_tower"]
    assert tower["backbone"] == "siglip2-b-dense" and "SigLIP 2" in tower["model"]
    assert "Hugging Face tokenizer" in tower["tokenizer"] and not tower["random_weights"]
    assert main(["list"]) == EXIT_OK
    listed = [ln for ln in capsys.readouterr().out.splitlines() if "siglip2-b-dense" in ln]
    assert listed and "(text queries)" in listed[0]
