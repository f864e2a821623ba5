"""JAFAR: the upstream fixture, release files, checkpoint selection, normalisation,
exact tiling and kernel reuse."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import torch

import napari_featup as nf
from napari_featup.errors import UpsamplerError, WeightsFileError
from napari_featup.upsamplers import upsampler_info
from napari_featup.upsamplers.jafar import jafar_release
from napari_featup.upsamplers.jafar.releases import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from napari_featup.weights import read_tensors

CASE = "jafar_384_16x16_224"
IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    d = fixtures_dir / "anyup-jafar"
    if not (d / "jafar_384_seed2001.pth").is_file():
        pytest.skip("JAFAR fixtures missing")
    return d


def _check(out: torch.Tensor, z: dict) -> float:
    o = out.double().numpy()[0]
    y, x = z["pix_yx"].T
    return float(
        max(
            abs(o[:, y, x] - z["expected_pix"]).max(),
            abs(o[z["map_channels"]] - z["expected_maps"]).max(),
            abs(np.tensordot(z["proj_weights"], o, axes=(1, 0)) - z["expected_proj"]).max(),
            abs(o.mean((1, 2)) - z["expected_chan_mean"]).max(),
        )
    )


def test_fixture_matches_upstream(fx):
    z = dict(np.load(fx / f"{CASE}.npz"))
    up = nf.load_upsampler("jafar", weights=fx / "jafar_384_seed2001.pth", device="cpu")
    with torch.no_grad():
        out = up(torch.from_numpy(z["feats"]), torch.from_numpy(z["image"]))
    assert out.shape == (1, 384, 224, 224)
    assert _check(out, z) <= 1e-4


def _save_training_dict(fx, path, monkeypatch, sentinel):
    """A save dict as JAFAR's train.py writes it, with a config object of a class that
    is not installed, and an object whose unpickling would run a shell command."""
    mod = types.ModuleType("not_installed_omegaconf")

    class DictConfig:
        def __init__(self, content):
            self.content = content

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {sentinel}",)

    DictConfig.__module__ = mod.__name__
    DictConfig.__qualname__ = "DictConfig"
    mod.DictConfig = DictConfig
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    sd = torch.load(fx / "jafar_384_seed2001.pth", weights_only=True)["jafar"]
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(5)}}, "param_groups": []}
    torch.save(
        {
            "optimizer_jafar": opt,
            "epoch": 3,
            "cfg": DictConfig({"backbone": {"name": "vit_small_patch14_dinov2.lvd142m"}}),
            "evil": Evil(),
            "jafar": sd,
        },
        path,
    )
    monkeypatch.delitem(sys.modules, mod.__name__)
    return sd


def test_training_save_dict_loads_tensors_only(fx, tmp_path, monkeypatch):
    sentinel = tmp_path / "ran"
    path = tmp_path / "jafar_release.pth"
    sd = _save_training_dict(fx, path, monkeypatch, sentinel)
    with pytest.raises(pickle.UnpicklingError):  # what torch's safe loader says
        torch.load(path, weights_only=True)
    obj = read_tensors(path)
    assert not sentinel.exists()
    assert type(obj["cfg"]).__module__.startswith("inert.")
    assert all(torch.equal(obj["jafar"][k], v) for k, v in sd.items())
    up = nf.load_upsampler("jafar", weights=path, device="cpu")
    ref = nf.load_upsampler("jafar", weights=fx / "jafar_384_seed2001.pth", device="cpu")
    assert all(
        torch.equal(a, b) for a, b in zip(up.state_dict().values(), ref.state_dict().values())
    )
    assert not sentinel.exists()


def test_checkpoint_errors(fx, tmp_path):
    with pytest.raises(WeightsFileError, match="not a JAFAR checkpoint"):
        nf.load_upsampler("jafar", weights=fx / "anyup_seed1001.pth", device="cpu")
    data = (fx / "jafar_384_seed2001.pth").read_bytes()
    for n, cut in enumerate([len(data) // 3, len(data) - 200]):
        p = tmp_path / f"cut{n}.pth"
        p.write_bytes(data[:cut])
        with pytest.raises(WeightsFileError):
            nf.load_upsampler("jafar", weights=p, device="cpu")
    sd = torch.load(fx / "jafar_384_seed2001.pth", weights_only=True)["jafar"]
    del sd["sft_key.gamma.weight"]
    p = tmp_path / "missing_key.pth"
    torch.save({"jafar": sd}, p)
    with pytest.raises(WeightsFileError, match="missing 1 keys"):
        nf.load_upsampler("jafar", weights=p, device="cpu")


def test_wrong_channel_count(fx):
    up = nf.load_upsampler("jafar", weights=fx / "jafar_384_seed2001.pth", device="cpu")
    with pytest.raises(UpsamplerError, match="384-channel"):
        up(torch.randn(1, 256, 4, 4), torch.randn(1, 3, 32, 32))
    with pytest.raises(UpsamplerError, match="768"):
        nf.load_upsampler(
            "jafar", backbone="dinov2-b", weights=fx / "jafar_384_seed2001.pth", device="cpu"
        )


def test_release_selection():
    assert jafar_release("dinov2").key == "dinov2-s14"
    assert jafar_release("dinov2-reg").key == "dinov2-s14-reg4"
    assert jafar_release("dinov2-b").key == "dinov2-b14"
    assert jafar_release("timm:vit_base_patch16_224.dino").key == "dino-b16"
    assert jafar_release("timm:vit_base_patch16_clip_384").key == "clip-b16-384"
    assert jafar_release(checkpoint="siglip2-b16-512").dim == 768
    clip = jafar_release(checkpoint="clip-b16-384")
    assert (
        clip.url.endswith("/Weights/vit_base_patch16_clip_384.pth")
        and clip.mean == OPENAI_CLIP_MEAN
    )
    for name in ("dino16", "clip", "resnet50"):
        with pytest.raises(UpsamplerError, match="no published JAFAR checkpoint"):
            nf.load_upsampler("jafar", backbone=name, device="cpu")  # before any download
    with pytest.raises(UpsamplerError, match="choose one of"):
        jafar_release(checkpoint="nope")


def test_guidance_renormalised():
    """With a backbone's own mean / std, JAFAR sees the ImageNet-normalised guidance
    re-normalised to them."""
    kw = dict(backbone="dinov2", weights="random", device="cpu")
    clip = nf.load_upsampler(
        "jafar",
        mean="/".join(map(str, OPENAI_CLIP_MEAN)),
        std=" ".join(map(str, OPENAI_CLIP_STD)),
        **kw,
    )
    plain = nf.load_upsampler("jafar", **kw)
    g = torch.Generator().manual_seed(0)
    feats, image = torch.randn(1, 384, 3, 4, generator=g), torch.randn(1, 3, 30, 41, generator=g)
    m1, s1 = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
    by_hand = (
        (image * IMAGENET[1][:, None, None] + IMAGENET[0][:, None, None]) - m1[:, None, None]
    ) / s1[:, None, None]
    assert (clip(feats, image) - plain(feats, by_hand)).abs().max() <= 1e-5
    assert clip.extra_metadata()["guidance_mean"] == pytest.approx(list(OPENAI_CLIP_MEAN))
    with pytest.raises(UpsamplerError):
        nf.load_upsampler("jafar", mean="0.5/0.5", std="1/1/1", **kw)


def _random(c=16):
    up = nf.load_upsampler("jafar", backbone="dinov2", weights="random", device="cpu")
    # a small channel count keeps these tests fast: rebuild at c channels
    return type(up)(c) if c != 384 else up


def test_tiled_untiled_kernels_non_square():
    up = _random(24).eval()
    g = torch.Generator().manual_seed(1)
    feats, image = torch.randn(1, 24, 5, 3, generator=g), torch.randn(1, 3, 67, 43, generator=g)
    full = up(feats, image)
    assert full.shape == (1, 24, 67, 43)
    bands = [slice(0, 9), slice(9, 10), slice(10, 66), slice(66, 67)]
    tiled = torch.cat([up.upsample(feats, image, rows=r) for r in bands], dim=2)
    assert (tiled - full).abs().max() <= 1e-5
    up.memory_mb = 0  # the memory-bounded encoder
    up.clear_cache()
    swept = torch.cat([up.upsample(feats, image, rows=r) for r in bands], dim=2)
    assert (swept - full).abs().max() <= 1e-5
    k = up.content_kernels(feats, image)
    assert (k(feats) - full).abs().max() <= 1e-5
    assert torch.allclose(
        k.apply_linear(torch.ones(1, 1, 5, 3)), torch.ones(1, 1, 67, 43), atol=1e-5
    )


def test_random_needs_a_backbone_and_registry():
    with pytest.raises(UpsamplerError, match="needs backbone"):
        nf.load_upsampler("jafar", weights="random", device="cpu")
    info = upsampler_info("jafar")
    assert info.licence == "Apache-2.0" and "NeurIPS 2025" in info.citation
    up = nf.load_upsampler("jafar", backbone="dinov2", weights="random", device="cpu")
    assert up.extra_metadata()["random_weights"]
