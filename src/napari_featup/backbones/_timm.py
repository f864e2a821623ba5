"""timm access shared by the families: building, weight conversion, dense maps, cache ids."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn


def import_timm() -> Any:
    """``import timm`` after guarding against triton's LLVM clash (see _triton_guard)."""
    from .._triton_guard import guard_triton

    guard_triton()
    import timm

    return timm


def create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model``; ``dynamic_img_size`` is dropped for models without it."""
    timm = import_timm()
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        # CNNs take any size and have no such argument
        if "dynamic_img_size" not in kwargs or "dynamic_img_size" not in str(exc):
            raise
        kwargs.pop("dynamic_img_size")
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def timm_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` through the ``checkpoint_filter_fn`` of ``model``'s timm module, if any.

    That is what timm itself runs on pretrained files: it maps OpenAI CLIP, DINOv2 hub
    (``mask_token``, registers), RADIO, Meta ConvNeXt ... keys onto timm's.
    """
    module = sys.modules.get(type(model).__module__)
    filt = getattr(module, "checkpoint_filter_fn", None)
    return filt(dict(state), model) if filt is not None else state


def dense_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map of a timm model, (B, C, h, w), from ``forward_intermediates``.

    Prefix tokens (class, registers) are dropped and the final norm is applied
    (``norm=True``). ConvNeXt-style models keep their final LayerNorm in the head,
    where it normalises the pooled vector; applied at each location it is the norm of
    the dense map (what DINOv3's ConvNeXt applies to its patch tokens).
    """
    feats = model.forward_intermediates(
        x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
    )[-1]
    head_norm = getattr(getattr(model, "head", None), "norm", None)
    if (
        isinstance(getattr(model, "norm_pre", None), nn.Identity)
        and head_norm is not None
        and "LayerNorm" in type(head_norm).__name__
    ):
        feats = head_norm(feats)
    return feats


def hf_repo(timm_name: str) -> str | None:
    """The Hugging Face repository timm downloads ``timm_name``'s weights from."""
    if timm_name.startswith("hf-hub:"):
        return timm_name[len("hf-hub:") :].split("@")[0]
    try:
        cfg = import_timm().models.get_pretrained_cfg(timm_name)
    except Exception:  # noqa: BLE001 - an unknown name simply has no cached file
        return None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
