"""FeatUp JBU checkpoints: reading FeatUp's files (and refusing others), the registry
factory's use_norm and dim checks, and the published-checkpoint URLs and cache."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import napari_featup as nf
from napari_featup.upsamplers import featup_jbu as J
from napari_featup.upsamplers import load_upsampler
from napari_featup.weights import WeightsFileError, WeightsUnavailableError


@pytest.fixture
def jbu_dir(fixtures_dir: Path) -> Path:
    """The FeatUp-format checkpoints made by FeatUp's own code (shared fixtures)."""
    d = fixtures_dir / "featup-jbu"
    if not (d / "cases.json").is_file():
        pytest.skip(f"FeatUp JBU fixtures not found at {d} (set NAPARI_FEATUP_FIXTURES)")
    return d


# ----------------------------------------------------------------------------- checkpoints


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_checkpoint_ignores_other_weights_and_accepts_bare_state_dict(jbu_dir, tmp_path):
    raw = torch.load(jbu_dir / "dinov2.ckpt", weights_only=True)
    assert any(k.startswith(("downsampler.", "scale_net.", "model.")) for k in raw["state_dict"])
    up = nf.load_featup_checkpoint(jbu_dir / "dinov2.ckpt")
    bare = _save(tmp_path / "bare.pt", up.state_dict())
    again = nf.load_featup_checkpoint(bare)
    for k, v in up.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_checkpoint_errors(jbu_dir, tmp_path):
    good = torch.load(jbu_dir / "dinov2.ckpt", weights_only=True)
    sd = good["state_dict"]
    only_other = {k: v for k, v in sd.items() if not k.startswith("upsampler.")}
    with pytest.raises(WeightsFileError, match="no 'upsampler"):
        nf.load_featup_checkpoint(_save(tmp_path / "a.ckpt", {"state_dict": only_other}))
    missing = {k: v for k, v in sd.items() if k != "upsampler.up3.range_proj.0.weight"}
    with pytest.raises(WeightsFileError, match="missing upsampler.*up3.range_proj.0.weight"):
        nf.load_featup_checkpoint(_save(tmp_path / "b.ckpt", {"state_dict": missing}))
    extra = dict(sd, **{"upsampler.up5.range_temp": torch.tensor(0.0)})
    with pytest.raises(WeightsFileError, match="unexpected upsampler.*up5"):
        nf.load_featup_checkpoint(_save(tmp_path / "c.ckpt", {"state_dict": extra}))
    shape = dict(sd, **{"upsampler.up2.fixup_proj.0.weight": torch.zeros(49, 51, 1, 1)})
    with pytest.raises(WeightsFileError, match=r"up2.fixup_proj.0.weight: \(49, 51, 1, 1\)"):
        nf.load_featup_checkpoint(_save(tmp_path / "d.ckpt", {"state_dict": shape}))
    final = dict(sd, **{"upsampler.fixup_proj.1.weight": torch.zeros(384, 10, 1, 1)})
    with pytest.raises(WeightsFileError, match="fixup_proj.1.weight"):
        nf.load_featup_checkpoint(_save(tmp_path / "e.ckpt", {"state_dict": final}))
    with pytest.raises(WeightsFileError, match="not a FeatUp checkpoint"):
        nf.load_featup_checkpoint(_save(tmp_path / "f.ckpt", [torch.zeros(2)]))
    data = (jbu_dir / "dinov2.ckpt").read_bytes()
    (tmp_path / "trunc.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFileError, match="truncated"):
        nf.load_featup_checkpoint(tmp_path / "trunc.ckpt")
    (tmp_path / "text.ckpt").write_text("this is not a checkpoint\n")
    with pytest.raises(WeightsFileError):
        nf.load_featup_checkpoint(tmp_path / "text.ckpt")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        nf.load_featup_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"upsampler.x": torch.zeros(1)}, "obj": Path("x")}, path)
    with pytest.raises(WeightsFileError, match="weights_only"):
        nf.load_featup_checkpoint(path)


# ----------------------------------------------------------------------------- registry, cache


def test_registry_use_norm_and_dim_checks(jbu_dir):
    assert "featup-jbu" in nf.list_upsamplers()
    ckpt = jbu_dir / "dinov2.ckpt"
    up = load_upsampler("featup-jbu", backbone="dinov2", weights=ckpt, device="cpu")
    assert up.use_norm is True and up.linear and not up.training and up.name == "featup-jbu"
    assert (
        load_upsampler("featup-jbu", backbone="dinov2", weights=ckpt, use_norm=False).use_norm
        is False
    )
    with pytest.raises(ValueError, match="512-d"):
        load_upsampler("featup-jbu", backbone="clip", weights=ckpt)
    r1 = load_upsampler("featup-jbu", backbone="maskclip", weights="random")
    r2 = load_upsampler("featup-jbu", backbone="maskclip", weights="random")
    assert r1.dim == 512 and torch.equal(r1.up1.range_proj[0].weight, r2.up1.range_proj[0].weight)
    with pytest.raises(ValueError, match="takes no options"):
        load_upsampler("featup-jbu", backbone="dinov2", weights=ckpt, radius=5)
    with pytest.raises(ValueError, match="channels"):
        up(torch.zeros(1, 10, 2, 2), torch.zeros(1, 3, 28, 28))


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_published_checkpoint_offline_error_names_url_and_destination(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    _no_network(monkeypatch)
    dest = J.featup_checkpoint_path("dinov2", True)
    assert dest.is_relative_to(tmp_path / "cache")
    url = J.featup_checkpoint_url("dinov2", True)
    assert url == (
        "https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/"
        "pretrained/dinov2_jbu_stack_cocostuff.ckpt"
    )
    no_norm = J.featup_checkpoint_url("maskclip", False)
    assert no_norm.endswith("pretrained/no_norm/maskclip_jbu_stack_cocostuff.ckpt")
    with pytest.raises(WeightsUnavailableError) as info:
        load_upsampler("featup-jbu", backbone="dinov2", use_norm=True)
    msg = str(info.value)
    assert url in msg and str(dest) in msg and "NAPARI_FEATUP_CACHE" in msg
    assert not dest.exists() and not list(dest.parent.glob("*.part-*"))  # nothing half-written
    with pytest.raises(WeightsUnavailableError, match="only with use_norm=False"):
        load_upsampler("featup-jbu", backbone="maskclip", use_norm=True)
    with pytest.raises(
        WeightsUnavailableError, match="no JBU checkpoint for backbone 'dinov2-reg'"
    ):
        load_upsampler("featup-jbu", backbone="dinov2-reg")


def test_published_checkpoint_reused_from_cache(jbu_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    _no_network(monkeypatch)
    for use_norm in (True, False):
        dest = J.featup_checkpoint_path("dinov2", use_norm)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(jbu_dir / "dinov2.ckpt", dest)
        up = load_upsampler("featup-jbu", backbone="dinov2", use_norm=use_norm)
        assert up.use_norm is use_norm and str(dest) in up.source
        assert nf.download_featup_checkpoint("dinov2", use_norm) == dest
    damaged = J.featup_checkpoint_path("dino16", True)
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text("<html>proxy error</html>")
    with pytest.raises(WeightsFileError, match="delete .*dino16_jbu_stack_cocostuff.ckpt"):
        load_upsampler("featup-jbu", backbone="dino16")
    assert set(J.FEATUP_CHECKPOINTS) == {"dino16", "dinov2", "clip", "vit", "resnet50", "maskclip"}
    assert J.FEATUP_CHECKPOINTS["maskclip"] == (False,)


def test_default_use_norm_is_the_tables_first_setting():
    assert J.default_use_norm("dinov2") is True and J.default_use_norm("MaskCLIP") is False
    with pytest.raises(WeightsUnavailableError, match="no JBU checkpoint for backbone 'x'"):
        J.default_use_norm("x")
