"""``timm:<model name>``: any timm model as a backbone (group ``"custom"``).

The dense map is the last entry of timm's ``forward_intermediates`` (prefix tokens
dropped, final norm applied); dim and stride are read from the model, built on the
``meta`` device so that naming a model costs no memory and no download. Names may carry
a pretrained tag (``timm:vit_small_patch16_224.augreg_in21k``) or name a Hugging Face
repository (``timm:hf-hub:timm/vit_base_patch16_clip_224.openai``; resolving such a name
reads its config from the Hub or the local cache). Inputs are converted from ImageNet
normalisation to the model's own (its pretrained config's mean / std).
"""

from __future__ import annotations

import torch

from ..errors import BackboneError, WeightsUnavailableError
from ._registry import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, register_prefix
from ._timm import create_timm, dense_features
from .modern import TimmDense

PREFIX = "timm:"


class TimmAny(TimmDense):
    """Any timm model with ``forward_intermediates``."""


def _probe(model: torch.nn.Module, name: str) -> tuple[int, int]:
    """(dim, stride) of ``model``'s dense map, from a forward pass of shapes only."""
    info = getattr(model, "feature_info", None)
    if not hasattr(model, "forward_intermediates") or not info:
        raise BackboneError(
            f"timm model {name!r} has no forward_intermediates / feature_info, so it gives "
            "no dense feature map; choose another model"
        )
    stride = info[-1]["reduction"]
    if not isinstance(stride, int) or stride < 1:
        raise BackboneError(f"timm model {name!r} has no single integer stride ({stride!r})")
    side = 2 * stride
    try:  # the meta device computes shapes without data: dim as forward_intermediates gives it
        x = torch.empty(1, 3, side, side, device="meta")
        dim = int(dense_features(model, x).shape[1])
    except Exception:  # noqa: BLE001 - an op without a meta kernel: trust feature_info
        dim = int(info[-1]["num_chs"])
    return dim, stride


def _suggest(model_name: str) -> str:
    """'; did you mean ...' with timm's closest model names ('' when none is close)."""
    import difflib

    import timm

    arch = model_name.split(".", 1)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.8)
    return f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""


def resolve(name: str) -> BackboneSpec:
    """The spec of ``timm:<model name>``."""
    model_name = name[len(PREFIX) :].strip()
    if not model_name:
        raise BackboneError("timm: needs a model name, e.g. timm:vit_small_patch16_224")
    try:
        with torch.device("meta"):  # shapes only: no memory, no weights
            model = create_timm(model_name, False, num_classes=0, dynamic_img_size=True)
    except Exception as exc:  # noqa: BLE001 - timm and the Hub raise many types
        if model_name.startswith("hf-hub:"):
            raise WeightsUnavailableError(
                f"the config of timm model {model_name!r} could not be read: "
                f"{type(exc).__name__}: {exc}\nOn a machine with internet run "
                f"`napari-featup download {name}` and copy the Hugging Face cache here."
            ) from exc
        raise BackboneError(
            f"timm cannot build model {model_name!r}: {exc}{_suggest(model_name)}"
        ) from exc
    dim, stride = _probe(model, model_name)
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    same = (mean, std) == (IMAGENET_MEAN, IMAGENET_STD) or len(mean) != 3
    return BackboneSpec(
        name=f"{PREFIX}{model_name}",
        timm_name=model_name,
        dim=dim,
        stride=stride,
        description=f"timm {model_name} ({type(model).__name__}), last map, normed",
        licence=str(cfg.get("license") or "see the model card"),
        group="custom",
        mean=None if same else mean,  # type: ignore[arg-type]
        std=None if same else std,  # type: ignore[arg-type]
        family=TimmAny,
    )


register_prefix(PREFIX, resolve)
