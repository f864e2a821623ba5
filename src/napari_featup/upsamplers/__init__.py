"""Upsamplers: one module per upsampler, each an :class:`Upsampler` subclass registered
with :func:`register_upsampler`.

Adding one is one new module (see docs/library.md, "Adding an upsampler")::

    @dataclass(frozen=True)
    class MyOptions:
        radius: int = 2

    @register_upsampler("my-up", description="...", options=MyOptions)
    class MyUp(Upsampler):
        linear = True
        def __init__(self, radius: int = 2): ...

and one import line at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..devices import resolve_device
from ..errors import UpsamplerError
from ._registry import (
    NoOptions,
    UpsamplerInfo,
    make_options,
    parse_options,
    register_upsampler,
    registered,
    upsampler_info,
)
from .base import Kernels, Upsampler, channel_norm, resize_bilinear


def list_upsamplers() -> list[str]:
    """Names accepted by :func:`load_upsampler`, in registration order.

    Returns
    -------
    list of str
    """
    return list(registered())


def describe_upsamplers() -> dict[str, str]:
    """Each registered upsampler's one-line description.

    Returns
    -------
    dict of str to str
        Name -> description, in registration order.
    """
    return {name: info.description for name, info in registered().items()}


def upsampler_options(name: str) -> dict[str, Any]:
    """The options upsampler ``name`` takes, with their defaults.

    Parameters
    ----------
    name : str
        A registered upsampler.

    Returns
    -------
    dict of str to object
        Option name -> default ({} when it takes none).
    """
    return upsampler_info(name).defaults()


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

    Parameters
    ----------
    name
        One of :func:`list_upsamplers`.
    backbone
        A backbone name or :class:`~napari_featup.backbones.Backbone`; upsamplers with
        per-backbone weights or per-image fits need it.
    use_norm
        Apply FeatUp's channel LayerNorm to the features first; None takes the
        upsampler's default.
    weights
        A local weights file (or ``"random"``) where the upsampler takes weights.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:N"`` or ``"mps"``.
    **options
        The upsampler's options (:func:`upsampler_options`); values may be strings.

    Returns
    -------
    Upsampler

    Raises
    ------
    UpsamplerError
        Unknown name, unknown option, a value of the wrong type, or weights given to
        an upsampler that has none.
    """
    info = upsampler_info(name)
    opts = make_options(info.name, options)
    dev = resolve_device(device)
    norm = info.default_use_norm if use_norm is None else bool(use_norm)
    up = info.cls.build(opts, backbone=backbone, use_norm=norm, weights=weights, device=dev)
    return up.eval().to(dev)


def options_dict(options: Any) -> dict[str, Any]:
    """A registry options object as a plain dict (for metadata)."""
    return dataclasses.asdict(options)


# The built-in upsamplers register themselves on import, in listing order.
from . import bilinear, featup_jbu, guided, implicit, anyup, jafar  # noqa: E402, F401  isort: skip

__all__ = [
    "Kernels",
    "NoOptions",
    "Upsampler",
    "UpsamplerError",
    "UpsamplerInfo",
    "channel_norm",
    "describe_upsamplers",
    "list_upsamplers",
    "load_upsampler",
    "make_options",
    "parse_options",
    "register_upsampler",
    "resize_bilinear",
    "upsampler_info",
    "upsampler_options",
]
