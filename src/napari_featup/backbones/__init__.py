"""Vision backbones built on timm: FeatUp's six (exactly as FeatUp runs them), modern ones
(DINOv2 with registers, DINOv3, SigLIP 2 and its text-aligned dense map, C-RADIOv3) and
``timm:<any model>``.

``load_backbone(name, weights=...)`` returns a :class:`Backbone`; ``bb(x)`` maps an
ImageNet-normalised (B, 3, H, W) tensor to a (B, dim, ceil(H/s), ceil(W/s)) grid.
A family of backbones is one module with one :func:`register_backbone` decorator; see
docs/backbones.md for the table, the exactness notes and the file formats accepted.
"""

from __future__ import annotations

from ..errors import BackboneError
from . import featup, modern, timm_any  # noqa: F401  (registration, in listing order)
from ._core import (
    RANDOM_SEED,
    Backbone,
    download_backbone,
    load_backbone,
    pad_to_stride,
    pretrained_cached,
)
from ._registry import (
    GROUPS,
    BackboneFamily,
    BackboneSpec,
    describe_backbones,
    featup_checkpoint_settings,
    get_spec,
    is_backbone_name,
    list_backbones,
    register_backbone,
    register_prefix,
)

__all__ = [
    "GROUPS",
    "RANDOM_SEED",
    "Backbone",
    "BackboneError",
    "BackboneFamily",
    "BackboneSpec",
    "describe_backbones",
    "download_backbone",
    "featup_checkpoint_settings",
    "get_spec",
    "is_backbone_name",
    "list_backbones",
    "load_backbone",
    "pad_to_stride",
    "pretrained_cached",
    "register_backbone",
    "register_prefix",
]
