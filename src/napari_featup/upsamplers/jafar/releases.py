"""JAFAR's published checkpoints, the backbones they were trained on, and the guidance
normalisation each expects.

From the JAFAR README's model table (https://github.com/PaulCouairon/JAFAR, "Available
Models"); the file names are the timm model names JAFAR's ``train.py`` was run with
(the README's labels of the two ViT-B/16 rows are swapped: the ``.dino`` file is
DINO's). JAFAR normalises the image with the backbone's timm data config (mean / std),
which is ImageNet's for DINO and DINOv2 but not for CLIP, SigLIP 2 or AugReg ViTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._attention.encoder import IMAGENET_MEAN, IMAGENET_STD

URL = "https://github.com/PaulCouairon/JAFAR/releases/download/Weights/{file}"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Release:
    """One published JAFAR checkpoint."""

    key: str  # our short name (option ``checkpoint=``)
    timm: str  # the timm model (with its pretrained tag) it was trained on
    label: str
    file: str
    dim: int  # feature channels it takes
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def url(self) -> str:
        return URL.format(file=self.file)


RELEASES: tuple[Release, ...] = (
    Release(
        "vit-b16",
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        "ViT-B/16 (AugReg, timm vit_base_patch16_224)",
        "vit_base_patch16_224.pth",
        768,
        HALF,
        HALF,
    ),
    Release(
        "dino-b16",
        "vit_base_patch16_224.dino",
        "DINO ViT-B/16",
        "vit_base_patch16_224.dino.pth",
        768,
    ),
    Release(
        "dinov2-s14",
        "vit_small_patch14_dinov2.lvd142m",
        "DINOv2 ViT-S/14",
        "vit_small_patch14_dinov2.lvd142m.pth",
        384,
    ),
    Release(
        "dinov2-b14",
        "vit_base_patch14_dinov2.lvd142m",
        "DINOv2 ViT-B/14",
        "vit_base_patch14_dinov2.lvd142m.pth",
        768,
    ),
    Release(
        "dinov2-s14-reg4",
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "DINOv2 ViT-S/14 with 4 registers",
        "vit_small_patch14_reg4_dinov2.pth",
        384,
    ),
    Release(
        "clip-b16-384",
        "vit_base_patch16_clip_384.laion2b_ft_in12k_in1k",
        "CLIP ViT-B/16 at 384 px (timm vit_base_patch16_clip_384, LAION-2B)",
        "vit_base_patch16_clip_384.pth",
        768,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
    ),
    Release(
        "siglip2-b16-512",
        "vit_base_patch16_siglip_512.v2_webli",
        "SigLIP 2 ViT-B/16 at 512 px",
        "vit_base_patch16_siglip_512.v2_webli.pth",
        768,
        HALF,
        HALF,
    ),
)

#: timm names without a pretrained tag -> the tag timm resolves them to
_DEFAULT_TAGS = {
    "vit_base_patch16_224": "augreg2_in21k_ft_in1k",
    "vit_small_patch14_reg4_dinov2": "lvd142m",
    "vit_small_patch14_dinov2": "lvd142m",
    "vit_base_patch14_dinov2": "lvd142m",
    "vit_base_patch16_clip_384": "laion2b_ft_in12k_in1k",
}


def canonical_timm(name: str) -> str:
    """``name`` with the pretrained tag timm would give it (``timm:`` prefix dropped)."""
    name = str(name).removeprefix("timm:")
    if "." not in name and name in _DEFAULT_TAGS:
        return f"{name}.{_DEFAULT_TAGS[name]}"
    return name


def release_by_key(key: str) -> Release:
    for r in RELEASES:
        if key.lower() in (r.key, r.file, r.file.removesuffix(".pth"), r.timm):
            return r
    raise KeyError(key)


def release_for(timm_name: str | None) -> Release | None:
    """The release trained on this timm model, or None."""
    if not timm_name:
        return None
    name = canonical_timm(timm_name)
    return next((r for r in RELEASES if r.timm == name), None)


def describe_releases() -> str:
    return "; ".join(f"{r.key} = {r.label} ({r.dim}-d, timm:{r.timm})" for r in RELEASES)


def backbone_facts(backbone: Any) -> dict:
    """What JAFAR needs of a backbone (a Backbone, a registered name, or None): its
    name, timm model, channels and input mean / std (None where unknown)."""
    if backbone is None:
        return {"name": None, "timm": None, "dim": None, "mean": None, "std": None}
    spec = getattr(backbone, "spec", None)
    if spec is None and isinstance(backbone, str):
        from ...backbones import get_spec

        try:
            spec = get_spec(backbone)
        except ValueError:
            spec = None
        if spec is None:
            return {"name": backbone, "timm": backbone, "dim": None, "mean": None, "std": None}
    return {
        "name": getattr(spec, "name", None) or getattr(backbone, "name", None),
        "timm": getattr(spec, "timm_name", None),
        "dim": getattr(backbone, "dim", None) or getattr(spec, "dim", None),
        "mean": getattr(spec, "mean", None),
        "std": getattr(spec, "std", None),
    }


def timm_mean_std(timm_name: str | None) -> tuple[tuple, tuple] | None:
    """The mean / std of timm's pretrained config for ``timm_name`` (no download)."""
    if not timm_name:
        return None
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(canonical_timm(timm_name))
    except Exception:  # noqa: BLE001 - an unknown name or an old timm: no answer
        return None
    if cfg is None or not getattr(cfg, "mean", None):
        return None
    return tuple(cfg.mean), tuple(cfg.std)
