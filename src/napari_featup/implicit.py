"""Compatibility module: FeatUp's implicit upsampler moved to
:mod:`napari_featup.upsamplers.implicit`.

Kept because earlier documentation showed ``from napari_featup.implicit import ...``;
new code should import from :mod:`napari_featup.upsamplers.implicit`. Only the names
this module exported before are re-exported.
"""

from __future__ import annotations

from .upsamplers.implicit import (
    SETTINGS,
    FitProgress,
    ImplicitConfig,
    ImplicitFeatures,
    ImplicitFitter,
    fit_implicit,
    iter_fit_implicit,
    resolve_config,
)

__all__ = [
    "SETTINGS",
    "FitProgress",
    "ImplicitConfig",
    "ImplicitFeatures",
    "ImplicitFitter",
    "fit_implicit",
    "iter_fit_implicit",
    "resolve_config",
]
