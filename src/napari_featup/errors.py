"""The package's exceptions: one base, :class:`FeatUpError`, and a class per kind of
failure, so callers (the command line, the plugin, scripts) can act on the *type*.

Each class that was a ``ValueError`` or ``RuntimeError`` before this hierarchy still is
one, so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class FeatUpError(Exception):
    """Base class of every error napari-featup raises on purpose."""


class ImageError(FeatUpError, ValueError):
    """An image that cannot be used: its shape, dtype, values or channel choice."""


class BackboneError(FeatUpError, ValueError):
    """An unknown backbone name, an image too small for it, or unusable backbone weights."""


class UpsamplerError(FeatUpError, ValueError):
    """An unknown upsampler name, or options it does not take."""


class FeatureFileError(FeatUpError, ValueError):
    """A feature file cannot be written or read; the message says why."""


class WeightsUnavailableError(FeatUpError, RuntimeError):
    """Weights could not be found or fetched; the message says where to put them."""


class WeightsFileError(FeatUpError, ValueError):
    """A weights file exists but is not what it should be."""


class SettingsError(FeatUpError, ValueError):
    """A run setting typed by a user (channels, options) that cannot be understood."""


__all__ = [
    "BackboneError",
    "FeatUpError",
    "FeatureFileError",
    "ImageError",
    "SettingsError",
    "UpsamplerError",
    "WeightsFileError",
    "WeightsUnavailableError",
]
