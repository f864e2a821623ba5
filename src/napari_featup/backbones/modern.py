"""Backbones beyond FeatUp's six: DINOv2 (B, registers), DINOv3, SigLIP 2, C-RADIOv3.

Each is the timm model run as its authors run it for dense features, through timm's
``forward_intermediates`` (:func:`~._timm.dense_features`): prefix tokens (class,
registers) dropped, final norm applied. timm implements what these models need at any
size (DINOv3's RoPE, RADIO's crop-and-resize position embedding) and its default
position-embedding resize is the one the DINOv2-with-registers hub code uses
(bicubic, antialiased, to the target size). ``dinov2-b`` is the exception: DINOv2
without registers resizes like FeatUp's ``dinov2`` and shares its family.

None of these has a published FeatUp JBU stack; train your own and pass ``weights=PATH``
to ``featup-jbu``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._registry import BackboneFamily, BackboneSpec, register_backbone
from ._timm import dense_features
from .featup import FeatUpViT

DINOV3_LICENCE = "DINOv3 License (not OSI)"
#: OpenAI CLIP's normalisation, which C-RADIO keeps
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class TimmDense(BackboneFamily):
    """A timm model's last feature map from ``forward_intermediates`` (normed)."""

    @classmethod
    def timm_kwargs(cls, spec: BackboneSpec) -> dict[str, Any]:
        return {"num_classes": 0, "dynamic_img_size": True}

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return dense_features(model, x)


def _dinov2_reg(size: str, timm_size: str, dim: int) -> BackboneSpec:
    name = "dinov2-reg" if size == "S" else f"dinov2-reg-{size.lower()}"
    return BackboneSpec(
        name,
        f"vit_{timm_size}_patch14_reg4_dinov2.lvd142m",
        dim,
        14,
        f"DINOv2 ViT-{size}/14 with 4 registers, normed patch tokens",
        licence="Apache-2.0",
    )


register_backbone(_dinov2_reg("S", "small", 384))(TimmDense)

register_backbone(
    BackboneSpec(
        "dinov2-b",
        "vit_base_patch14_dinov2.lvd142m",
        768,
        14,
        "DINOv2 ViT-B/14 (no registers), normed patch tokens, DINOv2 hub resize",
        licence="Apache-2.0",
    )
)(FeatUpViT)

register_backbone(_dinov2_reg("B", "base", 768), _dinov2_reg("L", "large", 1024))(TimmDense)


def _dinov3_vit(tag: str, timm_size: str, dim: int, label: str) -> BackboneSpec:
    return BackboneSpec(
        f"dinov3-{tag}",
        f"vit_{timm_size}_patch16_dinov3.lvd1689m",
        dim,
        16,
        f"DINOv3 ViT-{label}/16 (LVD-1689M), 4 registers dropped, normed patch tokens",
        licence=DINOV3_LICENCE,
    )


def _dinov3_convnext(tag: str, timm_size: str, dim: int) -> BackboneSpec:
    return BackboneSpec(
        f"dinov3-convnext-{tag}",
        f"convnext_{timm_size}.dinov3_lvd1689m",
        dim,
        32,
        f"DINOv3 ConvNeXt-{tag.upper()} (distilled, LVD-1689M), last stage after the norm",
        licence=DINOV3_LICENCE,
    )


register_backbone(
    _dinov3_vit("s", "small", 384, "S"),
    _dinov3_vit("splus", "small_plus", 384, "S+"),
    _dinov3_vit("b", "base", 768, "B"),
    _dinov3_vit("l", "large", 1024, "L"),
    _dinov3_convnext("t", "tiny", 768),
    _dinov3_convnext("s", "small", 768),
    _dinov3_convnext("b", "base", 1024),
    BackboneSpec(
        "siglip2-b",
        "vit_base_patch16_siglip_224.v2_webli",
        768,
        16,
        "SigLIP 2 ViT-B/16 (WebLI, 224 px), patch tokens after the final norm",
        licence="Apache-2.0",
        text_tower=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
)(TimmDense)

# listed next to siglip2-b: the same network through its pooling head (text queries)
from . import siglip  # noqa: E402, F401

register_backbone(
    BackboneSpec(
        "radio-b",
        "naflexvit_base_patch16_radio_v3.c_radio",
        768,
        16,
        "C-RADIOv3 ViT-B/16 (NVIDIA), patch tokens, RADIO's position-embedding resize",
        licence="NVIDIA Open Model License (not OSI)",
        mean=CLIP_MEAN,
        std=CLIP_STD,
    ),
)(TimmDense)
