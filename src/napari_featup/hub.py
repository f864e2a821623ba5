"""FeatUp-style hub models: a backbone and its JBU stack in one module.

``nf.hub.load("dinov2", use_norm=True)`` mirrors FeatUp's
``torch.hub.load("mhamilton723/FeatUp", "dinov2", use_norm=True)``: ``model(x)`` maps an
ImageNet-normalised (B, 3, H, W) image to the JBU stack's upsampled features
(16x the grid), ``model.model(x)`` gives the low-res features (after the channel norm
when ``use_norm``), ``model.upsampler`` is the JBU stack. Unlike FeatUp's hub models
it is returned in eval mode (FeatUp leaves dropout on) and respects ``use_norm=False``.
The repository's ``hubconf.py`` exposes the same through ``torch.hub.load``: one entry
point per model, each made by :func:`hub_entry`.

The models are the backbones in FeatUp's checkpoint table
(:data:`~napari_featup.upsamplers.featup_jbu.FEATUP_CHECKPOINTS`), read from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .backbones import Backbone, load_backbone
from .errors import BackboneError
from .upsamplers import Upsampler, channel_norm, load_upsampler
from .upsamplers.featup_jbu import FEATUP_CHECKPOINTS, default_use_norm

#: the hub models: every backbone FeatUp published a JBU stack for
HUB_MODELS: tuple[str, ...] = tuple(FEATUP_CHECKPOINTS)


def _check_name(name: str) -> None:
    if name not in HUB_MODELS:
        raise BackboneError(f"no FeatUp hub model {name!r}; choose one of {', '.join(HUB_MODELS)}")


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
    use_norm: bool | None = None,
    pretrained: bool = True,
    weights: Any = None,
    upsampler_weights: Any = None,
    device: str | torch.device = "auto",
) -> UpsampledBackbone:
    """Backbone ``name`` with FeatUp's JBU stack, in eval mode.

    Parameters
    ----------
    name
        One of :data:`HUB_MODELS`.
    use_norm
        Channel-norm the features (and take the stack trained so); None: the
        setting of FeatUp's hub model (True, but False for maskclip).
    pretrained
        Pretrained backbone and FeatUp's published JBU checkpoint (both downloaded and
        cached); False gives random weights for both (labelled as such on
        ``model.model.backbone.weights`` and ``model.upsampler.source``).
    weights, upsampler_weights
        A local file for the backbone or the JBU stack, overriding ``pretrained``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...

    Raises
    ------
    BackboneError
        ``name`` is not a hub model.
    """
    _check_name(name)
    if use_norm is None:
        use_norm = default_use_norm(name)
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


def hub_entry(name: str) -> Callable[..., UpsampledBackbone]:
    """The torch.hub entry point of hub model ``name``, as ``hubconf.py`` exposes it.

    A plain function named ``name`` with FeatUp's signature,
    ``(pretrained=True, use_norm=<FeatUp's default for the model>)``, and a docstring
    (``torch.hub.help`` shows it).
    """
    _check_name(name)
    norm_default = default_use_norm(name)

    def entry(pretrained: bool = True, use_norm: bool = norm_default) -> UpsampledBackbone:
        return load(name, use_norm=use_norm, pretrained=pretrained)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"FeatUp's {name} hub model: the {name} backbone with its JBU stack, in eval mode "
        f"(:class:`napari_featup.hub.UpsampledBackbone`).\n\n"
        f"pretrained: pretrained backbone and FeatUp's published stack (downloaded once), "
        f"or random weights for both (tests, demos). use_norm: channel-norm the features "
        f"(FeatUp published {name} with use_norm in {list(FEATUP_CHECKPOINTS[name])}; "
        f"default {norm_default})."
    )
    return entry
