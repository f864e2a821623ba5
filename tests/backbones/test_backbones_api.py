import subprocess
import sys
from pathlib import Path

import pytest
import torch

import napari_featup as nf
from napari_featup.backbones import BackboneError, get_spec, pad_to_stride
from napari_featup.weights import WeightsFileError, WeightsUnavailableError

DIMS = {
    "dino16": 384,
    "dinov2": 384,
    "clip": 512,
    "maskclip": 512,
    "vit": 384,
    "resnet50": 2048,
    "dinov2-reg": 384,
    "dinov2-b": 768,
}


def test_list_backbones_has_featup_six_and_extras():
    names = nf.list_backbones()
    for n in ["dino16", "dinov2", "clip", "maskclip", "vit", "resnet50", "dinov2-reg", "dinov2-b"]:
        assert n in names
    assert not get_spec("dinov2-reg").featup_checkpoint
    assert not get_spec("dinov2-b").featup_checkpoint
    assert get_spec("maskclip").featup_checkpoint


@pytest.mark.parametrize("name", list(DIMS))
def test_dims_grids_and_determinism(name):
    bb = nf.load_backbone(name, weights="random", device="cpu")
    assert not bb.training and bb.dim == DIMS[name]
    s = bb.patch_size
    for h, w in [(2 * s, 3 * s), (2 * s + 5, 3 * s - 1), (s, s)]:
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            y1, y2 = bb(x), bb(x)
        assert y1.shape == (1, DIMS[name], -(-h // s), -(-w // s))
        assert y1.dtype == torch.float32 and torch.isfinite(y1).all()
        assert torch.equal(y1, y2)


def test_random_weights_are_reproducible_and_cached():
    a = nf.load_backbone("dino16", weights="random", cache=False)
    b = nf.load_backbone("dino16", weights="random", cache=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert nf.load_backbone("dino16", weights="random") is nf.load_backbone(
        "dino16", weights="random"
    )


def test_expected_strides():
    assert [get_spec(n).stride for n in ["dino16", "dinov2", "clip", "resnet50"]] == [
        16,
        14,
        16,
        32,
    ]


def test_too_small_image_names_minimum():
    bb = nf.load_backbone("dinov2", weights="random")
    with pytest.raises(BackboneError, match="at least 14 x 14"):
        bb(torch.zeros(1, 3, 10, 30))


def test_unknown_backbone():
    with pytest.raises(BackboneError, match="unknown backbone 'nope'.*dinov2"):
        nf.load_backbone("nope", weights="random")


def test_pad_to_stride_reflects_bottom_right():
    x = torch.arange(2 * 20 * 30, dtype=torch.float32).reshape(1, 2, 20, 30)
    p = pad_to_stride(x, 16)
    assert p.shape[-2:] == (32, 32)
    assert torch.equal(p[..., :20, :30], x)
    assert torch.equal(p[..., 20, :30], x[..., 18, :])  # reflection, not edge copy


def test_maskclip_last_block_is_value_path_only():
    """MaskCLIP == CLIP up to the last block, which keeps only proj(v(norm1(x)))."""
    bb = nf.load_backbone("maskclip", weights="random")
    model = bb.model
    # On CLIP's native 14 x 14 grid timm's intermediates use the position table as is;
    # at other sizes MaskCLIP resizes it FeatUp's way (tests/backbones/..._featup_exact).
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = bb(x)
        # timm's own intermediates: patch tokens after the second-to-last block.
        inter = model.forward_intermediates(
            x,
            indices=[len(model.blocks) - 2],
            norm=False,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        last = model.blocks[-1]
        qkv = last.attn.qkv(last.norm1(inter))
        v = qkv[..., 2 * qkv.shape[-1] // 3 :]
        ref = model.head(model.norm(last.attn.proj(v)))
        ref = ref.transpose(1, 2).reshape(1, 512, 14, 14)
    assert torch.allclose(ours, ref, atol=1e-5)
    clip = nf.load_backbone("clip", weights="random")
    assert not torch.allclose(clip(x), ours)


def test_clip_projects_every_normed_token():
    bb = nf.load_backbone("clip", weights="random")
    # native grid: timm's forward_features keeps the position table (see the test above)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        toks = bb.model.forward_features(x)[:, 1:]  # ln_post applied by timm
        ref = bb.model.head(toks).transpose(1, 2).reshape(1, 512, 14, 14)
        assert torch.allclose(bb(x), ref, atol=1e-5)


def test_weights_from_file_round_trip(tmp_path):
    bb = nf.load_backbone("vit", weights="random")
    # Perturb so a file load is distinguishable from a fresh random init.
    state = {k: v + 0.01 for k, v in bb.model.state_dict().items()}
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    loaded = nf.load_backbone("vit", weights=path)
    assert loaded.weights == str(path.resolve())
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert not torch.allclose(loaded(x), bb(x))
        ref = nf.load_backbone("vit", weights=path, cache=False)(x)
        assert torch.equal(loaded(x), ref)


def test_weights_file_errors(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        nf.load_backbone("vit", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsFileError, match="not a PyTorch weights file"):
        nf.load_backbone("vit", weights=junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(3)}, wrong)
    with pytest.raises(BackboneError, match="does not fit|does not hold"):
        nf.load_backbone("vit", weights=wrong)


def test_half_precision_needs_gpu_on_cpu():
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        nf.load_backbone("vit", weights="random", device="cpu", precision="float16")


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device"):
        nf.load_backbone("vit", weights="random", device="tpu9")


def test_pretrained_offline_error_names_model_cache_and_command(tmp_path):
    code = (
        "import napari_featup as nf\n"
        "try:\n"
        "    nf.load_backbone('dinov2', weights='pretrained')\n"
        "except nf.WeightsUnavailableError as e:\n"
        "    print(e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(nf.__file__).parents[1])  # this tree's package, not another
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "vit_small_patch14_dinov2.lvd142m" in out.stdout, out.stderr
    assert str(tmp_path / "hf") in out.stdout
    assert "napari-featup download dinov2" in out.stdout


def test_truncated_weights_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"a": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(WeightsFileError, match="truncated or corrupt"):
        nf.load_backbone("vit", weights=cut)
