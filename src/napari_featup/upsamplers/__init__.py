"""Upsampler registry: one module per upsampler, all behind :class:`Upsampler`.

To add one, write a module with an :class:`Upsampler` subclass and a factory
``make(backbone, use_norm, weights, device, **options) -> Upsampler``, and register it
in ``_FACTORIES`` below.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ..devices import resolve_device
from .base import Kernels, Upsampler, channel_norm, resize_bilinear

# name -> (module, factory attribute, one-line description)
_FACTORIES: dict[str, tuple[str, str, str]] = {
    "bilinear": (".bilinear", "make", "bilinear interpolation (no guidance, no weights)"),
    "featup-jbu": (".featup_jbu", "make", "FeatUp JBU stack (16x, pretrained per backbone), pure PyTorch"),
    "jbu-classic": (".jbu_classic", "make",
                    "joint bilateral upsampling guided by image colour, with back-projection (no weights)"),
    "guided-fit": (".guided_fit", "make", "per-image fitted anisotropic guided kernels (no weights)"),
    "featup-implicit": (".implicit", "make", "FeatUp's implicit model, fitted to each image"),
}


class UpsamplerError(ValueError):
    """Unknown upsampler name or options it does not take."""


def list_upsamplers() -> list[str]:
    """Names accepted by :func:`load_upsampler`."""
    return list(_FACTORIES)


def describe_upsamplers() -> dict[str, str]:
    """Name -> one-line description."""
    return {k: v[2] for k, v in _FACTORIES.items()}


def load_upsampler(
    name: str,
    backbone: Any = None,
    *,
    use_norm: bool | None = None,
    weights: Any = None,
    device: str | torch.device = "auto",
    **options: Any,
) -> Upsampler:
    """Build upsampler ``name`` in eval mode on ``device``.

    ``backbone``: a backbone name or :class:`~napari_featup.backbones.Backbone`
    (upsamplers with per-backbone weights need it). ``use_norm``: apply FeatUp's
    channel LayerNorm to the features first (None: the upsampler's default).
    ``weights``: a local weights file where the upsampler has weights.
    """
    key = str(name).lower()
    if key not in _FACTORIES:
        raise UpsamplerError(
            f"unknown upsampler {name!r}; choose one of {', '.join(_FACTORIES)}"
        )
    module_name, attr, _ = _FACTORIES[key]
    factory = getattr(importlib.import_module(module_name, __name__), attr)
    dev = resolve_device(device)
    up = factory(backbone=backbone, use_norm=use_norm, weights=weights, device=dev, **options)
    return up.eval().to(dev)


__all__ = [
    "Kernels",
    "Upsampler",
    "UpsamplerError",
    "channel_norm",
    "describe_upsamplers",
    "list_upsamplers",
    "load_upsampler",
    "resize_bilinear",
]
