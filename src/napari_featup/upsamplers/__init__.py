"""Upsampler registry: one module per upsampler, all behind :class:`Upsampler`.

To add one, write a module with an :class:`Upsampler` subclass and a factory
``make(backbone, use_norm, weights, device, **options) -> Upsampler``, and register it
in ``_FACTORIES`` below.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Sequence
from typing import Any

import torch

from ..devices import resolve_device
from .base import Kernels, Upsampler, channel_norm, resize_bilinear

# name -> (module, factory attribute, one-line description)
_FACTORIES: dict[str, tuple[str, str, str]] = {
    "bilinear": (".bilinear", "make", "bilinear interpolation (no guidance, no weights)"),
    "featup-jbu": (
        ".featup_jbu",
        "make",
        "FeatUp JBU stack (16x, pretrained per backbone), pure PyTorch",
    ),
    "jbu-classic": (
        ".jbu_classic",
        "make",
        "joint bilateral upsampling guided by image colour, with back-projection (no weights)",
    ),
    "guided-fit": (
        ".guided_fit",
        "make",
        "per-image fitted anisotropic guided kernels (no weights)",
    ),
    "featup-implicit": (".implicit", "make", "FeatUp's implicit model, fitted to each image"),
}


class UpsamplerError(ValueError):
    """Unknown upsampler name or options it does not take."""


def _module(name: str):
    """The module of upsampler ``name`` (imported on first use)."""
    key = str(name).lower()
    if key not in _FACTORIES:
        raise UpsamplerError(f"unknown upsampler {name!r}; choose one of {', '.join(_FACTORIES)}")
    return importlib.import_module(_FACTORIES[key][0], __name__)


def upsampler_options(name: str) -> dict[str, Any]:
    """The main options of upsampler ``name`` with their defaults ({} when it takes
    none): its module's ``OPTIONS``, shown by the CLI's listing and the plugin. The
    factory checks what it is given; featup-implicit also takes any
    :class:`~napari_featup.implicit.ImplicitConfig` field."""
    return dict(getattr(_module(name), "OPTIONS", {}))


def parse_options(text: str | Sequence[str] | None) -> dict[str, Any]:
    """``"steps=40, settings=featup"`` or ``["steps=40", "settings=featup"]`` ->
    ``{"steps": 40, "settings": "featup"}``.

    Values are read as Python literals (numbers, True/False, None) where they parse and
    kept as strings otherwise. Raises :class:`UpsamplerError` for an item without ``=``.
    """
    if text is None:
        return {}
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    options: dict[str, Any] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UpsamplerError(
                f"upsampler options are KEY=VALUE items (e.g. steps=40), got {item.strip()!r}"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return options


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
    factory = getattr(_module(name), _FACTORIES[str(name).lower()][1])
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
    "parse_options",
    "resize_bilinear",
    "upsampler_options",
]
