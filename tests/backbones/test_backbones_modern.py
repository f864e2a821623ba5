"""The registry and the backbones beyond FeatUp's six: DINOv3, SigLIP 2, RADIO, timm:<any>."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import napari_featup as nf
from napari_featup.backbones import describe_backbones, get_spec, list_backbones
from napari_featup.backbones._timm import dense_features
from napari_featup.weights import WeightsFileError

EXISTING = ["dino16", "dinov2", "clip", "maskclip", "vit", "resnet50", "dinov2-reg", "dinov2-b"]
NEW = [
    "dinov2-reg-b",
    "dinov2-reg-l",
    "dinov3-s",
    "dinov3-splus",
    "dinov3-b",
    "dinov3-l",
    "dinov3-convnext-t",
    "dinov3-convnext-s",
    "dinov3-convnext-b",
    "siglip2-b",
    "siglip2-b-dense",
    "radio-b",
]


def _x(h, w, seed=2):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _from_imagenet(x, mean, std):
    """ImageNet-normalised -> normalised with ``mean`` / ``std``, written out."""
    im_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    im_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x * im_std + im_mean - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )


class _Payload:
    """Not a tensor: a weights_only load must refuse it."""


def test_listing_keeps_the_existing_order_then_the_new_ones():
    assert list_backbones() == EXISTING + NEW
    assert list_backbones("featup") == ["dino16", "dinov2", "clip", "maskclip", "vit", "resnet50"]
    assert list_backbones("custom") == []
    with pytest.raises(nf.BackboneError, match="unknown backbone group"):
        list_backbones("vintage")


def test_featup_checkpoint_flag_comes_from_the_jbu_table():
    try:
        from napari_featup.upsamplers.featup_jbu.checkpoints import FEATUP_CHECKPOINTS
    except ImportError:
        from napari_featup.upsamplers.featup_jbu import FEATUP_CHECKPOINTS
    flagged = {n for n in list_backbones() if get_spec(n).featup_checkpoint}
    assert flagged == set(FEATUP_CHECKPOINTS)
    info = describe_backbones()
    assert info["maskclip"]["featup_jbu"] == (False,)
    assert info["maskclip"]["learned_upsampler"] == "FeatUp JBU (no_norm)"
    assert all("none published" in info[n]["learned_upsampler"] for n in NEW)
    assert get_spec("dinov3-b").learned_upsamplers == ()


def test_metadata_names_group_licence_and_timm_model():
    info = describe_backbones()
    for n in ["dinov3-s", "dinov3-l", "dinov3-convnext-b"]:
        assert info[n]["licence"] == "DINOv3 License (not OSI)"
    assert info["dinov3-splus"]["timm_name"] == "vit_small_plus_patch16_dinov3.lvd1689m"
    assert info["dinov3-convnext-t"]["timm_name"] == "convnext_tiny.dinov3_lvd1689m"
    assert info["siglip2-b"]["timm_name"] == "vit_base_patch16_siglip_224.v2_webli"
    assert info["radio-b"]["timm_name"] == "naflexvit_base_patch16_radio_v3.c_radio"
    assert info["clip"]["timm_name"] == "vit_base_patch16_clip_quickgelu_224.openai"
    assert info["clip"]["text_tower"] and info["siglip2-b"]["text_tower"]
    assert not info["dinov3-b"]["text_tower"]
    assert {d["group"] for d in info.values()} == {"featup", "modern"}


def test_dinov3_vit_drops_registers_and_norms_patch_tokens():
    bb = nf.load_backbone("dinov3-s", weights="random", device="cpu")
    m = bb.model
    assert m.num_prefix_tokens == 5  # class + 4 registers
    x = _x(48, 80)
    with torch.no_grad():
        tokens = m.forward_features(x)  # Eva: all tokens after the final norm
        ref = tokens[:, 5:].transpose(1, 2).reshape(1, 384, 3, 5)
        assert torch.allclose(bb(x), ref, atol=1e-5)


def test_dinov3_convnext_norms_each_location():
    bb = nf.load_backbone("dinov3-convnext-t", weights="random", device="cpu")
    x = _x(96, 128)
    with torch.no_grad():
        y = bb(x)
        ref = bb.model.head.norm(bb.model.forward_features(x))
    assert torch.allclose(y, ref, atol=1e-5)
    # freshly initialised LayerNorm (weight 1, bias 0): zero mean, unit variance per pixel
    assert y.mean(1).abs().max() < 1e-4
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(3, 4), atol=1e-3)


def test_siglip2_converts_imagenet_input_to_its_own_normalisation():
    bb = nf.load_backbone("siglip2-b", weights="random", device="cpu")
    x = _x(32, 48)
    with torch.no_grad():
        ref = dense_features(bb.model, _from_imagenet(x, (0.5,) * 3, (0.5,) * 3))
        assert torch.allclose(bb(x), ref, atol=1e-5)


def test_timm_any_model_reads_dim_stride_and_normalisation():
    spec = get_spec("timm:vit_tiny_patch16_224.augreg_in21k")
    assert (spec.dim, spec.stride, spec.group) == (192, 16, "custom")
    assert spec.timm_name == "vit_tiny_patch16_224.augreg_in21k"
    assert spec.mean == (0.5, 0.5, 0.5) and not spec.featup_checkpoint
    assert get_spec("timm:resnet18").mean is None  # ImageNet already
    assert (get_spec("timm:convnext_atto").dim, get_spec("timm:convnext_atto").stride) == (320, 32)
    with pytest.raises(nf.BackboneError, match="cannot build model 'no_such_net'"):
        get_spec("timm:no_such_net")
    with pytest.raises(nf.BackboneError, match="did you mean timm:vit_small_patch16_224"):
        get_spec("timm:vit_smal_patch16_224.augreg_in21k")  # a typo: timm's close names
    with pytest.raises(nf.BackboneError, match="timm:<model name>"):
        get_spec("nope")


def test_timm_any_drops_prefix_tokens_and_applies_the_final_norm():
    bb = nf.load_backbone("timm:vit_tiny_patch16_224", weights="random", device="cpu")
    x = _x(32, 64)
    m = bb.model
    with torch.no_grad():
        tokens = m.forward_features(_from_imagenet(x, (0.5,) * 3, (0.5,) * 3))
        ref = tokens[:, m.num_prefix_tokens :].transpose(1, 2).reshape(1, 192, 2, 4)
        assert torch.allclose(bb(x), ref, atol=1e-5)


def test_user_checkpoint_for_a_modern_backbone(tmp_path):
    bb = nf.load_backbone("dinov3-s", weights="random", device="cpu", cache=False)
    state = {k: v + 0.01 for k, v in bb.model.state_dict().items()}
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    mine = nf.load_backbone("dinov3-s", weights=path, device="cpu", cache=False)
    x = _x(32, 32)
    with torch.no_grad():
        before = bb(x)
        bb.model.load_state_dict(state)
        assert torch.equal(mine(x), bb(x)) and not torch.allclose(before, bb(x))
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "obj": _Payload()}, evil)
    with pytest.raises(WeightsFileError, match="weights_only=True"):
        nf.load_backbone("dinov3-s", weights=evil, cache=False)


def test_offline_errors_name_the_model_and_the_download_command(tmp_path):
    code = (
        "import napari_featup as nf\n"
        "for name in ['dinov3-s', 'timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k']:\n"
        "    try:\n"
        "        nf.load_backbone(name, weights='pretrained')\n"
        "    except nf.WeightsUnavailableError as e:\n"
        "        print('ERR', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(nf.__file__).parents[1])  # this tree's package, not another
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.count("ERR") == 2, out.stderr
    assert "vit_small_patch16_dinov3.lvd1689m" in out.stdout
    assert "napari-featup download dinov3-s" in out.stdout
    assert "napari-featup download timm:hf-hub:timm/vit_tiny_patch16_224" in out.stdout
