"""The implicit fit's settings: :class:`ImplicitConfig`, the named presets in
:data:`SETTINGS`, and :func:`resolve_config`, which applies overrides and checks them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ...errors import UpsamplerError


@dataclass(frozen=True)
class ImplicitConfig:
    """Every knob of the fit. ``SETTINGS`` holds the named presets."""

    views: int = 3000  # jittered views featurised by the backbone
    steps: int = 1200  # optimiser steps
    batch: int = 10  # views per step
    lr: float = 2e-3  # NAdam learning rate (FeatUp: torch's default)
    schedule: str = "constant"  # "constant" or "cosine" (decay to lr_floor * lr)
    lr_floor: float = 0.05
    warmup: int = 0  # linear warm-up steps
    n_freqs: int = 30  # Fourier frequencies, exp(linspace(-2, 10, n_freqs))
    proj_dim: int = 128  # PCA dimensions the network predicts
    pca_views: int = 50  # views the PCA is fitted on
    max_pad: int = 30  # reflect padding of a view (px)
    max_zoom: float = 1.8
    flips: bool = True
    dropout: float = 0.2  # Dropout2d in the MLP
    attn_dropout: float = 0.2  # dropout on the attention downsampler's input
    logit_mask: float = 0.2  # fraction of windows whose attention logits are zeroed
    mag_weight: float = 0.001
    mag_tv_weight: float = 0.05
    blur_pin: float = 0.1
    cells: int = 0  # >0: each view's loss covers a random window of cells x cells grid cells
    view_batch: int = 16  # views per backbone call
    max_fit_pixels: int = 2 * 224 * 224  # larger images are fitted downscaled

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for metadata and saved fits)."""
        return asdict(self)


SETTINGS: dict[str, ImplicitConfig] = {
    # FeatUp's train_implicit_upsampler.py with configs/implicit_upsampler.yaml.
    "featup": ImplicitConfig(),
    # Fewer views (the backbone on 3000 views dominates on CPU), each scored on a random
    # 8 x 8 window of grid cells (16 windows cost about half of FeatUp's 10 whole views),
    # a higher peak lr with warm-up and cosine decay, and fewer steps. Chosen with
    # benchmarks/bench_implicit.py at 224 px on one CPU core against a full FeatUp run
    # (3000 views, 1200 steps): 8 windows a step end higher, 32 gain nothing per step,
    # 512 views nothing over 256. docs/implicit.md has the curves and the speed-up.
    "fast": ImplicitConfig(
        views=256,
        steps=700,
        batch=16,
        cells=8,
        lr=8e-3,
        schedule="cosine",
        warmup=5,
        pca_views=32,
    ),
    # A quick look: the same recipe cut to 32 views and 70 steps (about 1/13 of "fast"'s
    # time; its held-out loss levels off near that of FeatUp's 60th step).
    "preview": ImplicitConfig(
        views=32,
        steps=70,
        batch=4,
        cells=8,
        lr=8e-3,
        schedule="cosine",
        warmup=5,
        pca_views=32,
    ),
}


def resolve_config(settings: str | ImplicitConfig = "fast", **overrides: Any) -> ImplicitConfig:
    """A checked config from a preset and overrides.

    Parameters
    ----------
    settings
        A preset name (``"fast"``, ``"preview"``, ``"featup"``; any case) or a config.
    **overrides
        :class:`ImplicitConfig` fields; ``None`` values keep the preset's value.

    Raises
    ------
    UpsamplerError
        An unknown preset or field, or a value out of range.
    """
    if isinstance(settings, ImplicitConfig):
        cfg = settings
    else:
        key = str(settings).lower()
        if key not in SETTINGS:
            raise UpsamplerError(
                f"unknown implicit settings {settings!r}; choose one of {', '.join(SETTINGS)}"
            )
        cfg = SETTINGS[key]
    names = {f.name for f in fields(ImplicitConfig)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise UpsamplerError(f"unknown implicit option(s) {bad}; accepted: {sorted(names)}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    check_config(cfg)
    return cfg


def _whole(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_config(cfg: ImplicitConfig) -> None:
    """Raise :class:`UpsamplerError` naming the first field of ``cfg`` out of range."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UpsamplerError(f"implicit option {what}")

    need(
        isinstance(cfg.cells, (int, np.integer)) and cfg.cells >= 0,
        f"cells={cfg.cells!r} must be a whole number >= 0",
    )
    for name in ("views", "steps", "batch", "n_freqs", "proj_dim", "pca_views", "view_batch"):
        v = getattr(cfg, name)
        need(_whole(v) and v >= 1, f"{name}={v!r} must be a whole number >= 1")
    need(
        isinstance(cfg.max_fit_pixels, (int, np.integer)) and cfg.max_fit_pixels >= 256,
        f"max_fit_pixels={cfg.max_fit_pixels!r} must be a whole number >= 256",
    )
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"lr={cfg.lr!r} must be a positive number")
    need(
        cfg.schedule in ("constant", "cosine"),
        f"schedule={cfg.schedule!r} must be 'constant' or 'cosine'",
    )
    need(cfg.max_zoom >= 1.0, f"max_zoom={cfg.max_zoom!r} must be >= 1")
    need(cfg.max_pad >= 0, f"max_pad={cfg.max_pad!r} must be >= 0")
    for name in ("dropout", "attn_dropout", "logit_mask"):
        v = getattr(cfg, name)
        need(0.0 <= v < 1.0, f"{name}={v!r} must be in [0, 1)")


__all__ = ["SETTINGS", "ImplicitConfig", "check_config", "resolve_config"]
