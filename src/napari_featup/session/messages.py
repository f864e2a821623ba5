"""Turn exceptions from a run into messages that say what to do (no Qt needed).

Errors are told apart by *type* (:mod:`napari_featup.errors`), never by a base class
as broad as ``ValueError``: a :class:`~napari_featup.errors.SettingsError` already
says what to change in the widget, the others get the advice for their kind.
"""

from __future__ import annotations

from ..errors import (
    BackboneError,
    FeatureFileError,
    ImageError,
    SettingsError,
    UpsamplerError,
    WeightsFileError,
    WeightsUnavailableError,
)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, or a RuntimeError saying so."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ in ("OutOfMemoryError", "_ArrayMemoryError"):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def explain(exc: BaseException, context: str = "") -> str:
    """A one-paragraph message: what went wrong (``context``: while doing what) and
    what to do about it."""
    what = f" {context}" if context else ""
    if isinstance(exc, SettingsError):
        return str(exc)  # written for the widget: it names the field and the fix
    if is_out_of_memory(exc):
        return (
            f"FeatUp ran out of memory{what} ({type(exc).__name__}: {exc}). What to do: "
            "compute the displayed slice only, crop or downsample the image, choose the "
            "bilinear upsampler or a backbone with fewer channels, use float16/bfloat16 on "
            "a GPU or the CPU (more memory), and close layers you do not need."
        )
    if isinstance(exc, WeightsUnavailableError):
        return (
            f"Weights are missing{what}: {exc}\nWhat to do: put the weights where the "
            "message says, choose Weights: local file and pick a weights file, or choose "
            "Weights: random to try the plugin (random features mean nothing)."
        )
    if isinstance(exc, WeightsFileError):
        return f"The weights file cannot be used{what}: {exc}\nWhat to do: pick another file."
    if isinstance(exc, BackboneError):
        return f"{exc}{what}.\nWhat to do: use a larger image or another backbone."
    if isinstance(exc, UpsamplerError):
        return (
            f"The upsampler cannot be used{what}: {exc}\nWhat to do: check the Options field "
            "(empty: the upsampler's defaults) and the upsampler checkpoint, or choose "
            "another upsampler."
        )
    if isinstance(exc, ImageError):
        return f"This image cannot be used{what}: {exc}"
    if isinstance(exc, FeatureFileError):
        return f"The feature file cannot be used{what}: {exc}"
    return f"FeatUp failed{what}: {type(exc).__name__}: {exc}"
