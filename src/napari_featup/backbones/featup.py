"""FeatUp's six backbones, reproducing FeatUp's featurizers value for value.

FeatUp's published JBU stacks were trained on exactly these outputs, so each family
follows the code FeatUp runs rather than timm's defaults (see docs/backbones.md):

- dino16, vit: DINO's ViT (``facebookresearch/dino``; FeatUp loads timm's AugReg
  weights into the same class for ``vit``): last block after the final norm, with DINO's
  position-embedding resize (:func:`~._vit.offset_bicubic`).
- dinov2: the DINOv2 hub model (``dinov2_vits14``): normed patch tokens; its native grid
  is 37 x 37 (518 px), so the hub's resize applies at 224 px too.
- clip: FeatUp's CLIP fork, ``get_visual_features``: QuickGELU (OpenAI's activation,
  where timm's ``vit_base_patch16_clip_224`` uses GELU), ln_post and the 768 -> 512
  projection on every token, position embeddings by the fork's grid_sample.
- maskclip: FeatUp's MaskCLIP: the last block keeps only ``out_proj(v(ln_1(x)))``.
- resnet50: torchvision's v1 weights, layer4, run unpadded as FeatUp does.

Original-format files load with ``weights=PATH``: the DINO and DINOv2 hub ``.pth``
state dicts (DINOv2's ``mask_token`` is dropped), OpenAI's ``ViT-B-16.pt`` TorchScript
archive (read by :func:`napari_featup.weights.read_state_dict`), torchvision's
ResNet-50 state dict, and timm-format files.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ._registry import BackboneFamily, BackboneSpec, register_backbone
from ._vit import PosResize, clip_fork, offset_bicubic, to_grid, vit_tokens

_FEATUP = {"group": "featup"}

DINO16 = BackboneSpec(
    "dino16",
    "vit_small_patch16_224.dino",
    384,
    16,
    "DINO ViT-S/16, last block after the final norm",
    licence="Apache-2.0",
    **_FEATUP,
)
DINOV2 = BackboneSpec(
    "dinov2",
    "vit_small_patch14_dinov2.lvd142m",
    384,
    14,
    "DINOv2 ViT-S/14 (no registers), normed patch tokens",
    licence="Apache-2.0",
    **_FEATUP,
)
CLIP = BackboneSpec(
    "clip",
    "vit_base_patch16_clip_quickgelu_224.openai",
    512,
    16,
    "CLIP ViT-B/16 (OpenAI), ln_post and projection on every token",
    licence="MIT (OpenAI CLIP)",
    text_tower=True,
    **_FEATUP,
)
MASKCLIP = BackboneSpec(
    "maskclip",
    "vit_base_patch16_clip_quickgelu_224.openai",
    512,
    16,
    "MaskCLIP: CLIP ViT-B/16 whose last block keeps only the value path",
    licence="MIT (OpenAI CLIP)",
    text_tower=True,
    **_FEATUP,
)
VIT = BackboneSpec(
    "vit",
    "vit_small_patch16_224.augreg_in21k_ft_in1k",
    384,
    16,
    "ViT-S/16 (AugReg, ImageNet-21k then 1k), after the final norm",
    licence="Apache-2.0",
    **_FEATUP,
)
RESNET50 = BackboneSpec(
    "resnet50",
    "resnet50.tv_in1k",
    2048,
    32,
    "ResNet-50, torchvision v1 weights, layer4",
    licence="BSD-3-Clause (torchvision)",
    **_FEATUP,
)

_HEADS = ("head.", "fc.")


def _drop_unused(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Classifier heads the feature model does not have, and DINOv2's training-only token."""
    own = model.state_dict()
    return {
        k: v
        for k, v in state.items()
        if k != "mask_token" and (k in own or not k.startswith(_HEADS))
    }


class FeatUpViT(BackboneFamily):
    """A timm ViT run with the position-embedding resize of FeatUp's code: all tokens
    after the final norm, class token dropped."""

    resize: ClassVar[PosResize] = staticmethod(offset_bicubic)

    @classmethod
    def timm_kwargs(cls, spec: BackboneSpec) -> dict[str, Any]:
        return {"num_classes": 0, "dynamic_img_size": True}

    @classmethod
    def convert(
        cls, spec: BackboneSpec, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        own = model.state_dict()
        if all(k in own for k in _drop_unused(state, model)):
            # DINO / DINOv2 hub files already use timm's names; timm's filter would also
            # resample a position table of another size, which must fail instead
            return _drop_unused(state, model)
        return super().convert(spec, state, model)

    @classmethod
    def tokens(cls, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        return vit_tokens(model, x, cls.resize)

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = cls.tokens(model, x)
        return to_grid(tokens[:, model.num_prefix_tokens :], h, w)


# DINO's and DINOv2's interpolate_pos_encoding are the same formula; only the native
# grid differs (14 x 14 for DINO at 224 px, 37 x 37 for DINOv2 at 518 px).
register_backbone(DINO16, DINOV2)(FeatUpViT)


@register_backbone(CLIP)
class ClipFork(FeatUpViT):
    """FeatUp's CLIP (its fork of OpenAI's code): QuickGELU blocks, ln_post and the
    projection on every token."""

    resize = staticmethod(clip_fork)

    @classmethod
    def timm_kwargs(cls, spec: BackboneSpec) -> dict[str, Any]:
        # the quickgelu arch is OpenAI's; num_classes=512 keeps the projection as `head`
        return {"num_classes": 512, "dynamic_img_size": True}

    @classmethod
    def convert(
        cls, spec: BackboneSpec, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        if any(k.startswith("visual.") for k in state):  # OpenAI's layout (text tower too)
            return BackboneFamily.convert(spec, state, model)
        return super().convert(spec, state, model)

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        tokens, h, w = cls.tokens(model, x)
        tokens = model.head(tokens)  # the 768 -> 512 projection, on every token
        return to_grid(tokens[:, model.num_prefix_tokens :], h, w)


@register_backbone(MASKCLIP)
class MaskClip(ClipFork):
    """FeatUp's MaskCLIP: CLIP whose last block keeps only the value path; its own
    position-embedding resize is DINO's (bicubic, +0.1)."""

    resize = staticmethod(offset_bicubic)

    @classmethod
    def tokens(cls, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        return vit_tokens(model, x, cls.resize, value_path_last=True)


register_backbone(VIT)(FeatUpViT)  # here, to keep FeatUp's listing order


@register_backbone(RESNET50)
class TorchvisionResNet(BackboneFamily):
    """torchvision's ResNet-50 (timm ``resnet50.tv_in1k``), layer4.

    Not padded: FeatUp runs it on any size, and zero-padded stride-2 convolutions give
    ``ceil(H / 32)`` rows anyway, so padding would only change the border values.
    """

    pads = False

    @classmethod
    def convert(
        cls, spec: BackboneSpec, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        return _drop_unused(state, model)  # torchvision and timm share the keys

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.forward_features(x)
