import importlib.util
import inspect
import shutil
from pathlib import Path

import pytest
import torch

from napari_featup import hub, weights
from napari_featup.upsamplers.featup_jbu import FEATUP_CHECKPOINTS, featup_checkpoint_path

REPO = Path(__file__).resolve().parents[1]


def test_hub_model_is_backbone_norm_and_jbu(tmp_path, fixtures_dir, monkeypatch):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    # A FeatUp-format checkpoint (random weights) where the published one is cached.
    dest = featup_checkpoint_path("dino16", use_norm=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(fixtures_dir / "featup-jbu" / "dino16.ckpt", dest)
    model = hub.load("dino16", use_norm=True, pretrained=True, weights="random")
    assert not model.training and not model.upsampler.training
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        low = model.model(x)
        out = model(x)
    assert low.shape == (1, 384, 2, 3) and out.shape == (1, 384, 32, 48)
    assert torch.allclose(low.mean(1), torch.zeros(1, 2, 3), atol=1e-4)  # channel norm applied
    assert torch.allclose(out, model.upsampler(low, x))


def test_hub_random_and_unknown():
    model = hub.load("dinov2", pretrained=False)
    assert model.model.backbone.weights == "random"
    assert model.upsampler.source.startswith("random")
    assert model.patch_size == 14
    with pytest.raises(ValueError, match="no FeatUp hub model 'dinov2-b'"):
        hub.load("dinov2-b")


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hubconf_entry_points():
    mod = _hubconf()
    for name in hub.HUB_MODELS:
        assert callable(getattr(mod, name))
    m = mod.vit(pretrained=False)
    assert isinstance(m, hub.UpsampledBackbone) and m.dim == 384


def test_hub_models_are_the_featup_checkpoint_table():
    # hubconf.py's entry points are made from the one table: the names torch.hub lists
    # (public callables of the module), their defaults and docstrings follow it
    assert tuple(FEATUP_CHECKPOINTS) == hub.HUB_MODELS
    mod = _hubconf()
    listed = {n for n in dir(mod) if callable(getattr(mod, n)) and not n.startswith("_")}
    assert listed == set(FEATUP_CHECKPOINTS)
    for name, norms in FEATUP_CHECKPOINTS.items():
        fn = getattr(mod, name)
        params = inspect.signature(fn).parameters
        assert fn.__name__ == name and f"FeatUp's {name} hub model" in fn.__doc__
        assert list(params) == ["pretrained", "use_norm"]
        assert params["pretrained"].default is True and params["use_norm"].default is norms[0]
    assert mod.maskclip.__defaults__ == (True, False)  # FeatUp published maskclip no_norm only


def test_torch_hub_loads_hubconf_locally():
    m = torch.hub.load(str(REPO), "dino16", source="local", pretrained=False, use_norm=False)
    assert isinstance(m, hub.UpsampledBackbone) and not m.training
    assert m.upsampler.use_norm is False and m.model.backbone.weights == "random"
