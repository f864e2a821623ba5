"""Training checkpoints in FeatUp's own Lightning layout, written atomically.

A file holds what FeatUp's loaders read -- ``state_dict`` with ``upsampler.*``,
``downsampler.*`` and ``scale_net.*`` (FeatUp's hub code takes ``["state_dict"]`` and
loads it with ``strict=False``; :func:`~.stack.load_featup_checkpoint` takes the
``upsampler.*`` part) -- beside Lightning's other top-level keys, plus two of ours that
FeatUp ignores: ``napari_featup`` (metadata: backbone, timm name, image count, steps,
loss curve, version, ...) and ``napari_featup_resume`` (optimizer-independent state to
continue a run: RNG state, step, config). Only tensors, numbers, strings, lists and
dicts: every file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import weights as _weights
from ...errors import WeightsFileError
from ...io.write import _temp_name, clean_stale_temporaries

#: the Lightning version FeatUp's published checkpoints were written with (the layout)
LIGHTNING_FORMAT = "1.9.5"
META_KEY = "napari_featup"
RESUME_KEY = "napari_featup_resume"


def checkpoint_dict(
    upsampler: nn.Module,
    downsampler: nn.Module,
    scale_net: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    epoch: int,
    metadata: dict[str, Any],
    resume: dict[str, Any] | None,
) -> dict[str, Any]:
    """The checkpoint as a dict (tensors copied to CPU)."""
    sd: dict[str, torch.Tensor] = {}
    for prefix, mod in (("upsampler", upsampler), ("downsampler", downsampler)):
        sd.update({f"{prefix}.{k}": v.detach().cpu().clone() for k, v in mod.state_dict().items()})
    sd.update(
        {f"scale_net.{k}": v.detach().cpu().clone() for k, v in scale_net.state_dict().items()}
    )
    opt = []
    if optimizer is not None:
        opt = [_to_cpu(optimizer.state_dict())]
    out = {
        "epoch": int(epoch),
        "global_step": int(step),
        "pytorch-lightning_version": LIGHTNING_FORMAT,
        "state_dict": sd,
        "loops": {},
        "callbacks": {},
        "optimizer_states": opt,
        "lr_schedulers": [],
        META_KEY: metadata,
    }
    if resume is not None:
        out[RESUME_KEY] = resume
    return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it: a crash
    mid-write leaves the previous checkpoint intact. The temporary is named after the
    writer's pid, and those of killed writers are removed by the next save."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = _temp_name(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A training checkpoint (``weights_only=True``), checked to hold a state dict.

    Raises
    ------
    WeightsFileError
        Not a FeatUp-layout checkpoint.
    WeightsUnavailableError
        No such file.
    """
    obj = _weights.torch_load(str(path))
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise WeightsFileError(f"{str(path)!r} is not a FeatUp-layout checkpoint (no state_dict)")
    return obj


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, without it."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}


def load_part(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, path: str) -> bool:
    """Load ``prefix.*`` into ``module`` when present with matching shapes; False if absent.

    Raises
    ------
    WeightsFileError
        Present but for another shape (a checkpoint of another feature dim or patch size).
    """
    sub = part(state, prefix)
    if not sub:
        return False
    own = module.state_dict()
    bad = [k for k in own if k not in sub or sub[k].shape != own[k].shape]
    if bad:
        shapes = ", ".join(
            f"{k}: {tuple(sub[k].shape) if k in sub else 'missing'} != {tuple(own[k].shape)}"
            for k in bad[:3]
        )
        raise WeightsFileError(f"{path!r}: {prefix}.* does not fit this run ({shapes})")
    module.load_state_dict({k: sub[k].to(own[k].dtype) for k in own})
    return True


__all__ = [
    "LIGHTNING_FORMAT",
    "META_KEY",
    "RESUME_KEY",
    "checkpoint_dict",
    "load_part",
    "part",
    "read_checkpoint",
    "save_atomic",
]
