"""One feature run over some planes of an image, as a generator (no Qt, no napari).

The napari widget runs :func:`iter_run` in a ``thread_worker``: it yields
:class:`~napari_featup.progress.Progress` events (a consumer that stops iterating
cancels the run at that step) and returns a :class:`RunOutput`. Everything slow
happens here, off the GUI thread: model loading (cached by ``load_backbone``), the
backbone, the upsampler's fitting, the PCA, the PCA colours and each plane's compact
field (:mod:`napari_featup.compact`: per-pixel coordinates in a shared basis, exact
norms) that makes later similarity clicks cheap for every upsampler. Errors are
returned, not raised, so the caller reports them its own way.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..analysis import PCAProjection
from ..compact import Basis
from ..errors import WeightsUnavailableError
from ..pipeline import FeatureResult, iter_extract
from ..progress import Progress, relay
from .availability import check_weights
from .geometry import Index
from .large import LargeRun, iter_large_run
from .stack import fit_stack_basis, fit_stack_pca, plane_colours
from .warmup import wait_for_warm_up

# Share of the progress range each part of a plane takes, in units (the bar's total is
# the sum over the run). Extraction dominates (backbone, fits), colours and norms are
# one upsample each; within a share the nested generator's own events move the bar.
EXTRACT_UNITS = 4
COLOUR_UNITS = 1
NORM_UNITS = 1
PCA_UNITS = 1
PLANE_UNITS = EXTRACT_UNITS + COLOUR_UNITS + NORM_UNITS


@dataclass
class RunRequest:
    """What to compute.

    ``data``: the image layer's data (numpy, dask or any array napari holds), read
    plane by plane. ``planes``: indices into the stack axes (``[()]`` for a 2-D
    image). ``channel_axis``: an axis of ``data`` holding channels (not a stack axis),
    or None; ``rgb``: the layer is RGB(A) (last axis colour). ``pca``: reuse this PCA
    (to add planes to an existing stack with the same colours); None fits one.
    ``extract``: keyword arguments for :func:`~napari_featup.pipeline.iter_extract`
    (backbone, upsampler, weights, device, precision, scaling, contrast_limits,
    percentiles, channels, ...). ``basis``: reuse this similarity basis (as ``pca``).
    """

    data: Any
    planes: Sequence[Index]
    extract: dict
    rgb: bool = False
    channel_axis: int | None = None
    pca: PCAProjection | None = None
    basis: Basis | None = None
    #: a large 2-D image (:func:`.large.use_large_path`): streamed into a feature store
    large: bool = False


@dataclass
class RunOutput:
    """What a run made: features per plane, the PCA, basis and colours, or the error
    (``stage``: the stage of the last event before it, e.g. ``"upsampler"``)."""

    results: dict[Index, FeatureResult] = field(default_factory=dict)
    pca: PCAProjection | None = None
    basis: Basis | None = None
    colours: dict[Index, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    error: BaseException | None = None
    stage: str = ""
    #: what a large run made (:class:`.large.LargeRun`), instead of ``results``
    large: LargeRun | None = None


def plane_array(data: Any, index: Index, channel_axis: int | None) -> np.ndarray:
    """The 2-D plane ``index`` of ``data`` as numpy: (H, W[, 3|4]), or (K, H, W) when
    ``channel_axis`` (an axis before the two spatial ones) holds channels."""
    if channel_axis is None:
        return np.asarray(data[tuple(index)])
    full: list[Any] = list(index)
    full.insert(channel_axis, slice(None))
    return np.asarray(data[tuple(full)])


def progress_text(ev: Progress) -> str:
    """One status line for an event: percentage, message and the loss when known."""
    text = f"{100 * ev.fraction:.0f}%: {ev.message}"
    if ev.loss is not None and not math.isnan(ev.loss):
        text += f" (loss {ev.loss:.4g})"
    return text


def iter_run(request: RunRequest) -> Generator[Progress, None, RunOutput]:
    """Extract features of each requested plane, then PCA colours and norms.

    Yields :class:`~napari_featup.progress.Progress` events over one range for the
    whole run (each plane's extraction relayed into its share, so the bar moves
    through fits too); returns a :class:`RunOutput` whose ``error`` is set instead of
    raising.
    """
    out = RunOutput()
    planes = [tuple(int(v) for v in p) for p in request.planes]
    total = PLANE_UNITS * len(planes) + PCA_UNITS
    done = 0
    try:
        # a warm-up is loading the same backbone: wait for it and reuse its work
        yield from relay(wait_for_warm_up(), 0, 0, total)
        kwargs = dict(request.extract)
        _check_weights(kwargs, out)  # offline: fail now, not after the hub's retries
        kwargs["highres"] = False
        if request.large:
            gen = iter_large_run(request.data, kwargs, request.rgb, request.channel_axis)
            out.large = yield from _staged(relay(gen, 0, total - 1, total), out)
            out.stage = "done"
            yield Progress(total, total, "done", stage="done")
            return out
        if request.channel_axis is not None:
            kwargs["channel_axis"] = 0  # plane_array puts channels first
        for n, idx in enumerate(planes):
            label = f"plane {idx} ({n + 1}/{len(planes)}): " if idx else ""
            image = plane_array(request.data, idx, request.channel_axis)
            gen = iter_extract(image, **kwargs)
            stop = done + EXTRACT_UNITS
            out.results[idx] = yield from _staged(relay(gen, done, stop, total, prefix=label), out)
            done = stop
        pca, basis = request.pca, request.basis
        if pca is None or basis is None:
            out.stage = "pca"
            yield Progress(done, total, "fitting PCA", stage="pca")
            pca = pca if pca is not None else fit_stack_pca(out.results.values())
            basis = basis if basis is not None else fit_stack_basis(out.results.values())
        done += PCA_UNITS
        out.pca, out.basis = pca, basis
        for idx, res in out.results.items():
            label = f"plane {idx}: " if idx else ""
            out.stage = "colours"
            yield Progress(done, total, label + "PCA colours", stage="colours")
            res.pca = pca
            out.colours[idx] = plane_colours(res, pca)
            done += COLOUR_UNITS
            out.stage = "norms"
            yield Progress(
                done,
                total,
                label + "feature norms and compact field (for similarity clicks)",
                stage="norms",
            )
            res.field.compact(basis)
            done += NORM_UNITS
        out.stage = "done"
        yield Progress(done, total, "done", stage="done")
    except Exception as exc:  # noqa: BLE001 - reported by the caller, never raised into Qt
        # (MemoryError and torch's OutOfMemoryError are Exceptions too)
        out.error = exc
    return out


def _check_weights(kwargs: dict, out: RunOutput) -> None:
    backbone = kwargs.get("backbone", "dinov2")
    if not isinstance(backbone, str):
        return  # a loaded backbone object: nothing to fetch
    out.stage = "backbone"
    try:
        check_weights(
            backbone,
            str(kwargs.get("weights", "pretrained")),
            str(kwargs.get("upsampler", "bilinear")),
            kwargs.get("upsampler_weights"),
            kwargs.get("use_norm"),
            kwargs.get("upsampler_options"),
        )
    except WeightsUnavailableError as exc:
        out.stage = getattr(exc, "part", "backbone")  # "upsampler": its weights
        raise


def _staged(gen: Generator[Progress, None, Any], out: RunOutput) -> Generator[Progress, None, Any]:
    """Relay ``gen``, noting each event's stage on ``out`` (so an error can say which
    step failed: loading the backbone or the upsampler, a fit, ...)."""
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            out.stage = ev.stage
            yield ev
    finally:
        gen.close()  # a cancelled run stops the extraction there
