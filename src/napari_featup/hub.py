"""FeatUp-style hub models: a backbone and its JBU stack in one module.

``nf.hub.load("dinov2", use_norm=True)`` mirrors FeatUp's
``torch.hub.load("mhamilton723/FeatUp", "dinov2", use_norm=True)``: ``model(x)`` maps an
ImageNet-normalised (B, 3, H, W) image to the JBU stack's upsampled features
(16x the grid), ``model.model(x)`` gives the low-res features (after the channel norm
when ``use_norm``), ``model.upsampler`` is the JBU stack. Unlike FeatUp's hub models
it is returned in eval mode (FeatUp leaves dropout on) and respects ``use_norm=False``.
The repository's ``hubconf.py`` exposes the same through ``torch.hub.load``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backbones import Backbone, load_backbone
from .upsamplers import Upsampler, channel_norm, load_upsampler

HUB_MODELS = ("dino16", "dinov2", "clip", "maskclip", "vit", "resnet50")


class _Normed(nn.Module):
    def __init__(self, backbone: Backbone, use_norm: bool):
        super().__init__()
        self.backbone = backbone
        self.use_norm = use_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return channel_norm(feats) if self.use_norm else feats


class UpsampledBackbone(nn.Module):
    """Backbone + optional channel norm + JBU stack, as FeatUp's hub models."""

    def __init__(self, backbone: Backbone, upsampler: Upsampler, use_norm: bool):
        super().__init__()
        self.model = _Normed(backbone, use_norm)
        self.upsampler = upsampler
        self.dim = backbone.dim
        self.patch_size = backbone.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampler(self.model(x), x)


def load(
    name: str,
    use_norm: bool = True,
    pretrained: bool = True,
    weights: Any = None,
    upsampler_weights: Any = None,
    device: str | torch.device = "auto",
) -> UpsampledBackbone:
    """Backbone ``name`` with FeatUp's JBU stack, in eval mode.

    ``pretrained``: pretrained backbone and FeatUp's published JBU checkpoint (both
    downloaded and cached); False gives random weights for both (labelled as such on
    ``model.model.backbone.weights``). ``weights``/``upsampler_weights`` override either
    with a local file.
    """
    if name not in HUB_MODELS:
        raise ValueError(f"no FeatUp hub model {name!r}; choose one of {', '.join(HUB_MODELS)}")
    bb = load_backbone(
        name, weights=weights or ("pretrained" if pretrained else "random"), device=device
    )
    up = load_upsampler(
        "featup-jbu",
        backbone=bb,
        use_norm=use_norm,
        device=bb.device,
        weights=upsampler_weights if (upsampler_weights or pretrained) else "random",
    )
    return UpsampledBackbone(bb, up, use_norm).eval()
