"""Device and precision choice, shared by backbones and upsamplers.

Unknown or unavailable choices raise :class:`SettingsError` (a ``ValueError``).
"""

from __future__ import annotations

import torch

from .errors import SettingsError

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise SettingsError(
            f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} requested but CUDA is not available here; use cpu")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SettingsError(f"device {device!r} requested but Apple MPS is not available here")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Map ``float32``/``float16``/``bfloat16`` to a dtype; half precision needs a GPU."""
    key = str(precision).lower().replace("fp", "float").replace("half", "float16")
    if key not in PRECISIONS:
        raise SettingsError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    dtype = PRECISIONS[key]
    if dtype == torch.float16 and device.type == "cpu":
        raise SettingsError("float16 needs a GPU; on CPU use float32 (or bfloat16)")
    return dtype
