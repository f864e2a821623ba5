"""The widget's run settings as one object, and turning them into a run (no Qt).

:class:`RunSettings` holds what the settings panel shows, as plain values (the text
fields as typed). :meth:`RunSettings.extract_kwargs` parses and checks them;
:func:`plan_run` adds an image layer (read by duck typing: ``data``, ``rgb``,
``scale``, ``translate``, ``contrast_limits``, ``world_to_data``) and says exactly
what to compute. Every problem a user can fix in the widget raises
:class:`~napari_featup.errors.SettingsError` with a message that says what to do, so
the widget catches that one type; tests call all of this without a viewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backbones import get_spec, is_backbone_name
from ..errors import BackboneError, SettingsError, WeightsUnavailableError
from ..upsamplers import UpsamplerError, parse_options, upsampler_info, upsampler_options
from .geometry import Index, PlaneGeometry, current_plane, image_geometry
from .large import use_large_path
from .run import RunRequest
from .stack import FeatureStack

#: choices of :attr:`RunSettings.weights`, :attr:`~RunSettings.scaling` and
#: :attr:`~RunSettings.slices` (the settings panel labels them)
WEIGHTS = ("pretrained", "file", "random")
UPSAMPLER_WEIGHTS = ("published", "file", "random")
SCALINGS = ("contrast_limits", "percentile", "minmax")
SLICES = ("displayed", "all")
TILES = ("auto", "whole")
#: the working scales the widget offers ("downsample by k")
DOWNSAMPLES = (1, 2, 4, 8)


@dataclass
class RunSettings:
    """Everything the settings panel sets, as the user left it.

    ``weights`` is ``"pretrained"``, ``"file"`` (then ``weights_path``) or
    ``"random"``, the backbone's; ``upsampler_weights_source`` the same for the
    upsampler's: ``"published"`` (its published checkpoint, for upsamplers with
    weights), ``"file"`` (then ``upsampler_weights``, a path) or ``"random"``; a path
    given with ``"published"`` is used too. ``upsampler_options`` and ``channels`` are
    the text typed
    (``"steps=40, seed=1"``, ``"0,1,2"``); ``channel_axis`` an axis of the layer's data
    holding channels, or None; ``slices`` ``"displayed"`` or ``"all"``.
    """

    backbone: str = "dinov2"
    upsampler: str = "bilinear"
    upsampler_weights: str = ""
    upsampler_weights_source: str = "published"
    upsampler_options: str = ""
    weights: str = "pretrained"
    weights_path: str = ""
    device: str = "auto"
    precision: str = "float32"
    scaling: str = "contrast_limits"
    channel_axis: int | None = None
    channels: str = ""
    slices: str = "displayed"
    follow_slider: bool = True
    #: working scale: "downsample by k" (k x the patch size image px per feature cell)
    downsample: float = 1.0
    #: backbone tiles: "auto" (the backbone's native input size) or "whole" (one pass)
    tiles: str = "auto"

    def extract_kwargs(self) -> dict:
        """The settings as :func:`~napari_featup.pipeline.iter_extract` keywords
        (without the image-specific contrast limits); SettingsError when one cannot
        be used."""
        backbone = self.backbone.strip()
        if not backbone:
            raise SettingsError(
                "Backbone: a custom name is chosen but none is typed. What to do: type "
                "timm:<model name> or hf-hub:<repository> below Backbone, or choose a "
                "listed backbone."
            )
        if not is_backbone_name(backbone):
            raise SettingsError(
                f"Backbone: {backbone!r} is not a backbone name. What to do: choose a listed "
                "backbone, or type timm:<model name> (any timm model) or hf-hub:<repository>."
            )
        if self.weights not in WEIGHTS:
            raise SettingsError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        weights = self.weights
        if weights == "file":
            weights = self.weights_path.strip()
            if not weights:
                raise SettingsError(
                    "Weights: local file is chosen but no file is given. What to do: press "
                    "… and pick a weights file, or choose pretrained or random weights."
                )
        out: dict[str, Any] = dict(
            backbone=backbone,
            upsampler=self.upsampler,
            weights=weights,
            device=self.device,
            precision=self.precision,
            scaling=self.scaling,
        )
        options = parse_upsampler_options(self.upsampler, self.upsampler_options)
        if options:
            out["upsampler_options"] = options
        up_weights = self._upsampler_weights()
        if up_weights is not None and _takes_weights(self.upsampler):
            out["upsampler_weights"] = up_weights
        channels = parse_channels(self.channels)
        if channels is not None:
            out["channels"] = channels
        if float(self.downsample) != 1.0:
            from ..tiling import resolve_scale

            resolve_scale(get_spec(self.backbone).stride, float(self.downsample))  # whole px?
            out["downsample"] = float(self.downsample)
        if self.tiles not in TILES:
            raise SettingsError(f"tiles must be one of {TILES}, got {self.tiles!r}")
        if self.tiles == "whole":
            out["tile_size"] = None
        return out

    def _upsampler_weights(self) -> str | None:
        source = self.upsampler_weights_source
        if source not in UPSAMPLER_WEIGHTS:
            raise SettingsError(
                f"upsampler weights must be one of {UPSAMPLER_WEIGHTS}, got {source!r}"
            )
        if source == "random":
            return "random"
        path = self.upsampler_weights.strip()
        if source == "file" and not path:
            raise SettingsError(
                "Upsampler weights: file… is chosen but no file is given. What to do: "
                "press … next to it and pick a checkpoint (.ckpt), or choose published "
                "or random upsampler weights."
            )
        return path or None


def _takes_weights(upsampler: str) -> bool:
    """Whether ``upsampler`` has weights: the panel hides the upsampler-weights choice
    for one that has none, and a choice left there from another upsampler (random
    weights for featup-jbu, then jbu-classic chosen) must not reach it."""
    try:
        return upsampler_info(upsampler).takes_weights
    except UpsamplerError:
        return True  # an unknown name: the run reports it, weights or not


def options_hint(upsampler: str) -> str:
    """The upsampler's options with their defaults, as typed in the Options field
    (``"settings=fast, steps=None"``), or ``"no options"``."""
    return ", ".join(f"{k}={v}" for k, v in upsampler_options(upsampler).items()) or "no options"


def parse_upsampler_options(upsampler: str, text: str) -> dict[str, Any]:
    """``KEY=VALUE`` items -> dict (see :func:`~napari_featup.upsamplers.parse_options`);
    SettingsError for a malformed item. Whether the upsampler takes the options is
    checked when it is built."""
    try:
        return parse_options(text)
    except UpsamplerError as exc:
        raise SettingsError(
            f"{exc}. What to do: write the upsampler options as KEY=VALUE items separated "
            f"by commas (e.g. {options_hint(upsampler)}), or leave the field empty for the "
            "defaults."
        ) from exc


def parse_channels(text: str) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``, ``"1"`` -> ``[1]``, empty -> None; SettingsError
    for anything else."""
    items = [c for c in text.replace(" ", "").split(",") if c]
    if not items:
        return None
    try:
        channels = [int(c) for c in items]
    except ValueError:
        channels = []
    if len(channels) not in (1, 3):
        raise SettingsError(
            f"Channels {text!r} are not understood. What to do: give three channel indices "
            "separated by commas (e.g. 0,1,2) or one index."
        )
    return channels


def no_image_message(labels_name: str | None = None) -> str:
    """Why there is nothing to run on: no image layer (or only a Labels layer)."""
    if labels_name is not None:
        return (
            f"{labels_name!r} is a Labels layer, and FeatUp needs an Image layer. "
            "What to do: open or add the image the labels belong to (File > Open, "
            "or File > Open Sample > napari-featup) and pick it under Image."
        )
    return (
        "There is no image layer. What to do: open an image (File > Open) or a "
        "sample (File > Open Sample > napari-featup), then press Run."
    )


@dataclass
class PlannedRun:
    """A checked run: the request for the worker, the planes' geometry, the config
    the features will be recorded with, and the stack they extend (None: a new one)."""

    request: RunRequest
    geometry: PlaneGeometry
    config: dict
    extends: FeatureStack | None = None


def plan_run(
    settings: RunSettings,
    layer: Any,
    *,
    world_point: Sequence[float] = (),
    planes: Sequence[Index] | None = None,
    stack: FeatureStack | None = None,
    add_to_stack: bool = False,
    labels_name: str | None = None,
) -> PlannedRun | None:
    """Check ``settings`` against image layer ``layer`` and say what to compute.

    ``planes`` default to the one shown at the viewer position ``world_point``, or
    all of them when ``settings.slices == "all"``. With ``add_to_stack`` and a
    ``stack`` made with the same config, only its missing planes are computed, with its
    PCA (None when none is missing). ``layer`` None (``labels_name``: the Labels layer
    the user may have meant) and every setting that cannot be used raise
    :class:`~napari_featup.errors.SettingsError`.
    """
    if layer is None:
        raise SettingsError(no_image_message(labels_name))
    extract = settings.extract_kwargs()
    geometry = image_geometry(layer, settings.channel_axis)
    try:  # a custom timm: name is resolved here (its model built on the meta device)
        spec = get_spec(extract["backbone"])
    except (BackboneError, WeightsUnavailableError) as exc:
        raise SettingsError(
            f"Backbone: {exc}. What to do: check the name (timm.list_models() lists timm's "
            "models), or choose a listed backbone."
        ) from exc
    h, w = geometry.size
    if h < spec.stride or w < spec.stride:
        raise SettingsError(
            f"Image {layer.name!r} is {h} x {w} px, smaller than one {spec.stride} px patch "
            f"of backbone {extract['backbone']!r}. What to do: use a larger image (at least "
            "a few patches across), or upsample it first."
        )
    if extract["scaling"] == "contrast_limits":
        extract["contrast_limits"] = [float(v) for v in layer.contrast_limits]
    config = dict(extract, image=layer.name, channel_axis=settings.channel_axis)
    reuse = add_to_stack and stack is not None and stack.config == config
    if planes is None:
        if geometry.leading and settings.slices == "all":
            planes = geometry.planes()
        else:
            planes = [current_plane(layer, geometry, world_point, settings.channel_axis)]
    planes = [geometry.check_index(p) for p in planes]
    if reuse:
        planes = [p for p in planes if p not in stack.results]
        if not planes:
            return None
    request = RunRequest(
        data=layer.data[0] if getattr(layer, "multiscale", False) else layer.data,
        planes=planes,
        extract=extract,
        rgb=bool(layer.rgb),
        channel_axis=settings.channel_axis,
        pca=stack.pca if reuse else None,
        basis=stack.basis if reuse else None,
        large=use_large_path(geometry.size, extract["upsampler"], geometry.leading),
    )
    return PlannedRun(request, geometry, config, stack if reuse else None)
