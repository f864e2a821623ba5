"""FeatUp's published JBU checkpoints: the one table of them, their URLs, where they are
cached, the download, and reading a checkpoint file.

:data:`FEATUP_CHECKPOINTS` is the only place that says which backbones have a FeatUp JBU
stack; the hub models (``napari_featup.hub``, ``hubconf.py``), the ``download`` command
and the backbone registry read it. Loading a file into a stack is
:func:`~napari_featup.upsamplers.featup_jbu.stack.load_featup_checkpoint`, which reads
it with :func:`read_featup_state`.

This module holds no model code, so anything may import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ... import weights as _weights
from ...errors import WeightsFileError, WeightsUnavailableError

#: backbone -> the ``use_norm`` settings FeatUp published a JBU checkpoint for; the
#: first is the backbone's default (FeatUp's hub models: use_norm=True but maskclip)
FEATUP_CHECKPOINTS: dict[str, tuple[bool, ...]] = {
    "dino16": (True, False),
    "dinov2": (True, False),
    "clip": (True, False),
    "maskclip": (False,),
    "vit": (True, False),
    "resnet50": (True, False),
}

_BASE_URL = "https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/"


def default_use_norm(backbone: str) -> bool:
    """The ``use_norm`` of FeatUp's default checkpoint for ``backbone`` (True but maskclip).

    Raises
    ------
    WeightsUnavailableError
        FeatUp published no JBU stack for ``backbone``.
    """
    _checkpoint_name(backbone, None)
    return FEATUP_CHECKPOINTS[str(backbone).lower()][0]


def featup_checkpoint_url(backbone: str, use_norm: bool = True) -> str:
    """The FeatUp model-zoo URL of the JBU stack for ``backbone``.

    Raises
    ------
    WeightsUnavailableError
        FeatUp published no such stack (unknown backbone, or not with this ``use_norm``).
    """
    name = _checkpoint_name(backbone, use_norm)
    return _BASE_URL + ("" if use_norm else "no_norm/") + name


def featup_checkpoint_path(backbone: str, use_norm: bool = True) -> Path:
    """Where the cached checkpoint lives: ``cache_dir()/featup/{norm,no_norm}/NAME``.

    Raises
    ------
    WeightsUnavailableError
        FeatUp published no such stack.
    """
    return (
        _weights.cache_dir()
        / "featup"
        / ("norm" if use_norm else "no_norm")
        / _checkpoint_name(backbone, use_norm)
    )


def download_featup_checkpoint(backbone: str, use_norm: bool = True, progress: bool = True) -> Path:
    """Fetch FeatUp's JBU checkpoint for ``backbone`` into the cache (reused if present).

    Parameters
    ----------
    backbone : str
        One of FeatUp's six backbones (a name with a published JBU stack).
    use_norm : bool
        The stack trained on channel-normed features (FeatUp publishes both).
    progress : bool
        Show a download progress bar.

    Returns
    -------
    Path
        The cached file (:func:`featup_checkpoint_path`).

    Raises
    ------
    WeightsUnavailableError
        No such published stack, or offline; the message names the URL and the path
        where the file is expected.
    """
    return _weights.download(
        featup_checkpoint_url(backbone, use_norm),
        featup_checkpoint_path(backbone, use_norm),
        progress=progress,
    )


def _checkpoint_name(backbone: str, use_norm: bool | None) -> str:
    """The published file name; ``use_norm=None`` checks the backbone only."""
    name = str(backbone).lower()
    if name not in FEATUP_CHECKPOINTS:
        raise WeightsUnavailableError(
            f"FeatUp published no JBU checkpoint for backbone {backbone!r}; those with one: "
            f"{', '.join(FEATUP_CHECKPOINTS)}. Pass weights=PATH to use your own."
        )
    if use_norm is not None and bool(use_norm) not in FEATUP_CHECKPOINTS[name]:
        raise WeightsUnavailableError(
            f"FeatUp published the {name} JBU stack only with use_norm="
            f"{FEATUP_CHECKPOINTS[name][0]}; pass use_norm={FEATUP_CHECKPOINTS[name][0]}"
        )
    return f"{name}_jbu_stack_cocostuff.ckpt"


def read_featup_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The JBU stack's tensors in a FeatUp checkpoint, keys without ``upsampler.``.

    Reads with ``weights_only=True``; takes ``state_dict['upsampler.*']`` (or a bare
    JBU state dict, as saved from ``FeatUpJBU.state_dict()``) and ignores
    ``downsampler.*``, ``scale_net.*``, ``model.*`` and optimizer state. Checks that the
    final 1x1 conv is (C, C, 1, 1), C being the feature dim; whether the rest fits a
    stack is checked when it is loaded into one.

    Raises
    ------
    WeightsFileError
        Not such a checkpoint (another format, truncated, pickled objects, no
        ``upsampler.*`` tensors, no usable final conv).
    WeightsUnavailableError
        The file does not exist.
    """
    path = str(path)
    state = _checkpoint_state(_weights.torch_load(path), path)
    fix = state.get("fixup_proj.1.weight")
    if fix is None or fix.dim() != 4 or fix.shape[0] != fix.shape[1] or fix.shape[2:] != (1, 1):
        raise WeightsFileError(
            f"{path!r}: 'upsampler.fixup_proj.1.weight' missing or not (C, C, 1, 1) "
            f"(got {None if fix is None else tuple(fix.shape)}); not a FeatUp JBU stack"
        )
    return state


def _checkpoint_state(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The JBU part of a loaded checkpoint, keys without the ``upsampler.`` prefix."""
    if not isinstance(obj, Mapping):
        raise WeightsFileError(
            f"{path!r} holds a {type(obj).__name__}, not a FeatUp checkpoint (a dict with "
            f"'state_dict' holding 'upsampler.*' tensors)"
        )
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping):
        raise WeightsFileError(f"{path!r}: 'state_dict' is a {type(sd).__name__}, not a dict")
    if any(str(k).startswith("upsampler.") for k in sd):
        state = {
            k[len("upsampler.") :]: v for k, v in sd.items() if str(k).startswith("upsampler.")
        }
    elif "up1.range_temp" in sd:  # a bare JBU state dict (e.g. saved from FeatUpJBU)
        state = dict(sd)
    else:
        sample = ", ".join(sorted(map(str, sd))[:6]) or "none"
        raise WeightsFileError(
            f"{path!r} is not a FeatUp JBU checkpoint: no 'upsampler.*' weights in its state "
            f"dict (keys start with: {sample})"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsFileError(f"{path!r}: entries {bad[:5]} are not tensors")
    return state
