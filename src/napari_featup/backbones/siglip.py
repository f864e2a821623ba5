"""``siglip2-b-dense``: SigLIP 2's patch tokens carried into the space its text tower
answers in, so text queries work on SigLIP 2.

SigLIP aligns text with one image embedding, which its attention-pooling (MAP) head
makes from all patch tokens; the normed patch tokens ``siglip2-b`` gives live in another
space. Here each patch token goes through that head on its own, as MaskCLIP does with
CLIP's last attention: a token that attends only to itself turns the head's attention
into ``proj(v(t))``, followed by the head's MLP. Where all tokens are equal, the pooled
embedding and every dense token coincide exactly (the attention weights sum to one).

Both towers come from one file: open_clip's ``open_clip_model.safetensors`` in the
Hugging Face repository ``timm/ViT-B-16-SigLIP2``. Its ``visual.trunk.*`` entries are
timm's ``vit_base_patch16_siglip_224`` (MAP head included), its ``text.*`` entries the
text tower (:mod:`napari_featup.text`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BackboneError
from ..weights import read_state_dict
from ._hub import hub_file
from ._registry import BackboneFamily, BackboneSpec, register_backbone
from ._timm import create_timm, dense_features, timm_filter

#: the Hugging Face repository (open_clip's ``ViT-B-16-SigLIP2``, tag ``webli``)
SIGLIP2_REPO = "timm/ViT-B-16-SigLIP2"
#: open_clip's weights file in it, both towers
OPEN_CLIP_FILE = "open_clip_model.safetensors"
#: where open_clip keeps the timm image tower in that file
TRUNK = "visual.trunk."


def map_head_dense(head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Each token through a timm ``AttentionPoolLatent`` head on its own.

    Parameters
    ----------
    head : torch.nn.Module
        The MAP head (``model.attn_pool``).
    tokens : torch.Tensor
        (B, N, C) normed patch tokens, what the head pools.

    Returns
    -------
    torch.Tensor
        (B, N, C): ``proj(v(t))`` plus the head's MLP on its norm, per token.
    """
    if getattr(head, "pos_embed", None) is not None:
        raise BackboneError("a MAP head with its own position embedding is not supported")
    c = tokens.shape[-1]
    bias = head.kv.bias[c:] if head.kv.bias is not None else None
    y = head.proj(F.linear(tokens, head.kv.weight[c:], bias))  # the value half of kv
    if head.mlp is not None:
        y = y + head.mlp(head.norm(y))
    return y


class SiglipMapDense(BackboneFamily):
    """timm's SigLIP ViT with its MAP head, applied per token (module docstring)."""

    @classmethod
    def timm_kwargs(cls, spec: BackboneSpec) -> dict[str, Any]:
        return {"num_classes": 0, "dynamic_img_size": True}

    @classmethod
    def hub_repo(cls, spec: BackboneSpec) -> str | None:
        return SIGLIP2_REPO

    @classmethod
    def build(cls, spec: BackboneSpec, pretrained: bool) -> nn.Module:
        model = create_timm(spec.timm_name, False, **cls.timm_kwargs(spec))
        if pretrained:
            alt = f"pass weights=PATH to a copy of {OPEN_CLIP_FILE}"
            path = hub_file(SIGLIP2_REPO, (OPEN_CLIP_FILE,), "the image tower", spec.name, alt)
            model.load_state_dict(cls.convert(spec, read_state_dict(path), model), strict=True)
        return model

    @classmethod
    def convert(
        cls, spec: BackboneSpec, state: dict[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        """open_clip's whole-model file -> the image tower's timm keys; a timm-format
        file passes through timm's converter."""
        if any(k.startswith(TRUNK) for k in state):
            state = {k[len(TRUNK) :]: v for k, v in state.items() if k.startswith(TRUNK)}
        return timm_filter(state, model)

    @classmethod
    def features(cls, spec: BackboneSpec, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        grid = dense_features(model, x)  # (B, C, h, w) after the final norm
        b, c, h, w = grid.shape
        dense = map_head_dense(model.attn_pool, grid.flatten(2).transpose(1, 2))
        return dense.transpose(1, 2).reshape(b, c, h, w)


register_backbone(
    BackboneSpec(
        "siglip2-b-dense",
        "vit_base_patch16_siglip_224",
        768,
        16,
        "SigLIP 2 ViT-B/16 (WebLI), each patch token through the MAP head: in the text "
        "tower's space (text queries)",
        licence="Apache-2.0",
        text_tower=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
)(SiglipMapDense)
