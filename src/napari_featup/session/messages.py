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


#: how each audience sets the backbone's and the upsampler's weights
CONTROLS = {
    "widget": {
        "backbone": ("choose Weights: local file… and pick a weights file", "Weights: random"),
        "upsampler": (
            "choose Upsampler weights: file… and pick a checkpoint (.ckpt)",
            "Upsampler weights: random",
        ),
    },
    "cli": {
        "backbone": ("pass --weights PATH (a local weights file)", "--weights random"),
        "upsampler": (
            "pass --upsampler-weights PATH (a checkpoint, e.g. FeatUp's .ckpt)",
            "--upsampler-weights random",
        ),
    },
}


def weights_part(stage: str) -> str:
    """Whose weights a run was loading at ``stage`` (the stage of its last progress
    event): ``"upsampler"`` or ``"backbone"``."""
    return "upsampler" if stage in ("upsampler", "fit") else "backbone"


def weights_advice(exc: BaseException, stage: str = "", audience: str = "widget") -> str:
    """The message of a weights error, with the library's generic hint (``pass
    weights=PATH``) replaced by the control (``audience="widget"``) or flag (``"cli"``)
    that sets the weights that failed, and a "What to do" line naming it."""
    part = weights_part(stage)
    use_file, use_random = CONTROLS[audience][part]
    text = str(exc).replace("pass weights=PATH", use_file).replace("weights=PATH", use_file)
    whose = "The upsampler's weights" if part == "upsampler" else "Weights"
    where = "put the file where the message says, " if "download" in text else ""
    return (
        f"{whose} are missing: {text}\nWhat to do: {where}{use_file}, or use "
        f"{use_random} to try {'it' if audience == 'cli' else 'the plugin'} (random "
        "weights mean nothing)."
    )


def explain(exc: BaseException, context: str = "", stage: str = "") -> str:
    """A one-paragraph message: what went wrong (``context``: while doing what) and
    what to do about it. ``stage``: the stage the run was at (tells the backbone's
    weights from the upsampler's)."""
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
        advice = weights_advice(exc, stage, "widget")
        head, _, rest = advice.partition(": ")
        return f"{head}{what}: {rest}"
    if isinstance(exc, WeightsFileError):
        return f"The weights file cannot be used{what}: {exc}\nWhat to do: pick another file."
    if isinstance(exc, BackboneError):
        return f"{exc}{what}.\nWhat to do: use a larger image or another backbone."
    if isinstance(exc, UpsamplerError):
        return (
            f"The upsampler cannot be used{what}: {exc}\nWhat to do: check the Options field "
            "(empty: the upsampler's defaults) and Upsampler weights, or choose another "
            "upsampler."
        )
    if isinstance(exc, ImageError):
        return f"This image cannot be used{what}: {for_widget(str(exc))}"
    if isinstance(exc, FeatureFileError):
        return f"The feature file cannot be used{what}: {exc}"
    return f"FeatUp failed{what}: {type(exc).__name__}: {exc}"


def for_widget(text: str) -> str:
    """Library advice reworded for a user of the widget (who has no Python prompt)."""
    return text.replace(
        "replace them (e.g. np.nan_to_num) before extracting features",
        "fill or remove them before running FeatUp (e.g. napari's Process menu, or "
        "Fiji's Process > Math > Remove NaNs), or crop to a region without them",
    )
