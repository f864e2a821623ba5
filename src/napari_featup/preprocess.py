"""Turn an image as napari holds it into the normalised tensor a backbone eats.

Every step is explicit and recorded in a :class:`Preprocessing` record, so a result
says exactly how its input was made: which channels fed R, G and B, how intensities
were scaled to [0, 1], and how the image was padded to a whole number of patches.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import ImageError  # noqa: F401  (part of this module's interface)

# FeatUp feeds every backbone (CLIP included) ImageNet statistics, and the JBU
# guidance is the same normalised tensor, so pretrained JBU stacks only fit this.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Scaling = Literal["auto", "range", "contrast_limits", "percentile", "minmax"]
SCALINGS = ("auto", "range", "contrast_limits", "percentile", "minmax")


@dataclass
class Preprocessing:
    """How an input array became the backbone's (3, H, W) input in [0, 1]."""

    input_shape: tuple[int, ...]
    input_dtype: str
    layout: str  # "grey", "rgb", "rgba" or "multichannel"
    channels: list[Any]  # source channel (or mixing row) for R, G, B
    scaling: str
    limits: tuple[float, float]  # intensity mapped to 0 and to 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain values for metadata (JSON-ready)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["limits"] = [float(v) for v in self.limits]
        return d


def _as_numpy(image: Any) -> np.ndarray:
    if hasattr(image, "compute") and not isinstance(image, np.ndarray):  # dask
        image = image.compute()
    try:
        arr = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - any array-like failure is a bad input
        raise ImageError(f"cannot read the image as an array: {exc}") from exc
    if arr.dtype.kind == "c":
        raise ImageError("image is complex-valued; pass its magnitude or real part")
    # By kind, not np.number: timedelta64 counts as a number to numpy but is no intensity.
    if arr.dtype.kind not in "biuf":
        raise ImageError(
            f"image has dtype {arr.dtype}; expected a numeric or boolean array "
            "(uint8, uint16, int, float, bool)"
        )
    return arr


def to_channels_last(
    image: Any, *, rgb: bool | None = None, channel_axis: int | None = None
) -> tuple[np.ndarray, str]:
    """Return a (H, W, K) array and its layout name.

    ``image`` is 2-D grey (H, W), RGB/RGBA (H, W, 3|4) or multichannel with the
    channel axis named by ``channel_axis``. ``rgb=None`` guesses like napari does:
    a 3-D array whose last axis has 3 or 4 entries is RGB(A).
    """
    arr = _as_numpy(image)
    if arr.size == 0:
        raise ImageError(f"image is empty (shape {arr.shape})")
    if channel_axis is not None:
        if not -arr.ndim <= channel_axis < arr.ndim:
            raise ImageError(
                f"channel_axis={channel_axis} is out of range for a {arr.ndim}-D image "
                f"of shape {arr.shape}"
            )
        arr = np.moveaxis(arr, channel_axis, -1)
        if arr.ndim != 3:
            raise ImageError(
                f"image of shape {arr.shape} (channels last) has {arr.ndim - 1} spatial "
                "axes; pass one 2-D plane (with its channel axis), e.g. one slice of a stack"
            )
        k = arr.shape[-1]
        layout = "grey" if k == 1 else "multichannel"
        return arr, layout
    if arr.ndim == 2:
        return arr[..., None], "grey"
    if arr.ndim == 3 and (rgb or (rgb is None and arr.shape[-1] in (3, 4))):
        if arr.shape[-1] not in (3, 4):
            raise ImageError(f"rgb=True needs a last axis of 3 or 4, got shape {arr.shape}")
        return arr, "rgb" if arr.shape[-1] == 3 else "rgba"
    raise ImageError(
        f"image has shape {arr.shape}: expected (H, W) grey, (H, W, 3|4) RGB(A), or a "
        "multichannel image with channel_axis= naming its channel axis; for a stack "
        "pass one 2-D plane at a time"
    )


def _channel_index(c: Any) -> int:
    """An integer channel index (integral floats such as 1.0 too), or an ImageError."""
    if isinstance(c, (bool, np.bool_)):
        raise ImageError(f"channel {c!r} is a boolean, not a channel index")
    try:
        return operator.index(c)
    except TypeError:
        pass
    if isinstance(c, (float, np.floating)) and float(c).is_integer():
        return int(c)
    raise ImageError(f"channel {c!r} is not a channel index (an integer)")


def _mix(arr: np.ndarray, layout: str, channels: Any) -> tuple[np.ndarray, list[Any]]:
    """(H, W, K) float -> (H, W, 3) float and the recorded channel choice."""
    k = arr.shape[-1]
    if channels is None:
        if layout in ("rgb", "rgba"):
            channels = [0, 1, 2]
        elif k == 1:
            channels = [0, 0, 0]
        elif k == 3:
            channels = [0, 1, 2]
        else:
            # No natural colour mapping: the mean of all channels as grey.
            channels = [[1.0 / k] * k] * 3
    if isinstance(channels, np.ndarray):
        channels = channels.tolist()
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise ImageError(
            f"channels must be a list of 1 or 3 channel indices (or a 3 x {k} mixing "
            f"matrix), got {channels!r}"
        )
    channels = list(channels)
    if len(channels) == 1:
        channels = channels * 3
    if len(channels) != 3:
        raise ImageError(
            f"channels must name 1 or 3 source channels (or be a 3 x {k} mixing matrix), "
            f"got {len(channels)} entries"
        )
    planes = []
    for c in channels:
        if not isinstance(c, (Sequence, np.ndarray)) or isinstance(c, (str, bytes)):
            ci = _channel_index(c)
            if not -k <= ci < k:
                raise ImageError(f"channel {ci} does not exist: the image has {k} channel(s)")
            planes.append(arr[..., ci])
        else:
            try:
                w = np.asarray(c, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ImageError(f"a mixing row must be {k} numbers, got {c!r}") from exc
            if w.shape != (k,):
                raise ImageError(f"a mixing row must have {k} weights, got shape {w.shape}")
            with np.errstate(over="ignore", invalid="ignore"):  # checked by the caller
                planes.append(arr @ w)
    return np.stack(planes, axis=-1), channels


def _limits(
    arr: np.ndarray,
    dtype: np.dtype,
    scaling: str,
    contrast_limits: Sequence[float] | None,
    percentiles: tuple[float, float],
) -> tuple[str, tuple[float, float]]:
    if scaling not in SCALINGS:
        raise ImageError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    if scaling == "auto":
        if contrast_limits is not None:
            scaling = "contrast_limits"
        elif dtype == np.uint8 or dtype.kind == "b":
            scaling = "range"
        else:
            scaling = "percentile"
    if scaling == "contrast_limits":
        if contrast_limits is None:
            raise ImageError("scaling='contrast_limits' needs contrast_limits=(low, high)")
        try:
            lo, hi = (float(v) for v in contrast_limits)  # wrong counts raise ValueError
        except (TypeError, ValueError) as exc:
            raise ImageError(
                f"contrast_limits must be two numbers (low, high), got {contrast_limits!r}"
            ) from exc
    elif scaling == "range":
        if dtype.kind == "b":
            lo, hi = 0.0, 1.0
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = 0.0, 1.0  # floats are taken to be in [0, 1]
    elif scaling == "percentile":
        try:
            p_lo, p_hi = (float(v) for v in percentiles)
        except (TypeError, ValueError) as exc:
            raise ImageError(f"percentiles must be two numbers, got {percentiles!r}") from exc
        if not 0.0 <= p_lo <= p_hi <= 100.0:
            raise ImageError(f"percentiles {percentiles!r} must satisfy 0 <= low <= high <= 100")
        lo, hi = (float(v) for v in np.percentile(arr, (p_lo, p_hi)))
    else:  # minmax
        lo, hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError(f"intensity limits ({lo}, {hi}) are not finite")
    if lo > hi:
        raise ImageError(
            f"intensity limits ({lo}, {hi}) are reversed: the low limit must not exceed "
            "the high one"
        )
    return scaling, (lo, hi)


def _as_float(arr: np.ndarray) -> np.ndarray:
    """float32 values (float64 where float32 would overflow), all finite."""
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise ImageError(
                f"image contains {int((~finite).sum())} NaN or infinite value(s); replace "
                "them (e.g. np.nan_to_num) before extracting features"
            )
    with np.errstate(over="ignore"):
        data = arr.astype(np.float32, copy=False)
    if arr.dtype.kind == "f" and not np.isfinite(data).all():
        # float64 (or longer) values beyond float32's range: scale them in float64.
        with np.errstate(over="ignore"):
            data = arr.astype(np.float64)
        if not np.isfinite(data).all():
            raise ImageError(
                f"image values of dtype {arr.dtype} exceed float64's range; rescale the image"
            )
    return data


def _to_unit(mixed: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] to [0, 1] (clipped), without overflow for any finite inputs."""
    span = hi - lo
    if not span > 0:
        # A flat image (or flat within the limits) carries no contrast: map it to 0.5
        # rather than dividing by zero.
        return np.full_like(mixed, 0.5, dtype=np.float32)
    peak = max(abs(lo), abs(hi), float(np.abs(mixed).max()))
    if peak < 1e30 and span > 1e-30:
        # float32 cannot overflow or lose the span here (the usual case, half the memory)
        out = (mixed.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(span)
    else:
        # Halves keep x - lo and hi - lo finite in float64 for any finite x, lo, hi.
        half = mixed.astype(np.float64) * 0.5
        out = (half - lo * 0.5) / (hi * 0.5 - lo * 0.5)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def prepare_image(
    image: Any,
    *,
    rgb: bool | None = None,
    channel_axis: int | None = None,
    channels: Sequence[Any] | None = None,
    scaling: Scaling = "auto",
    contrast_limits: Sequence[float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> tuple[np.ndarray, Preprocessing]:
    """Convert an image to float32 (3, H, W) in [0, 1] and record how.

    Parameters
    ----------
    image : array-like
        numpy or dask: (H, W) grey, (H, W, 3|4) RGB(A), or multichannel with
        ``channel_axis``; any numeric or bool dtype (complex is refused).
    rgb : bool, optional
        Whether a last axis of 3 or 4 is colour (None: guessed as napari does).
    channel_axis : int, optional
        The channel axis of a multichannel image.
    channels : sequence, optional
        The source channel for R, G and B (1 or 3 indices) or a 3 x K mixing matrix; by
        default grey is repeated, RGB(A) keeps R, G, B (alpha dropped), three channels
        become R, G, B and any other count is averaged to grey.
    scaling : {"auto", "range", "contrast_limits", "percentile", "minmax"}
        ``"range"`` maps the dtype's full range (uint8, bool; floats as [0, 1]),
        ``"contrast_limits"`` the given (low, high) (napari's layer contrast limits),
        ``"percentile"`` the given percentiles, ``"minmax"`` the data's min and max.
        ``"auto"`` uses contrast limits when given, the dtype range for uint8/bool and
        percentiles otherwise (uint16 microscopy rarely fills its range). Multichannel
        images scaled from their data get one range per channel.
    contrast_limits : sequence of float, optional
        (low, high) for ``"contrast_limits"``.
    percentiles : tuple of float
        (low, high) percentiles for ``"percentile"``.

    Returns
    -------
    image : numpy.ndarray
        (3, H, W) float32 in [0, 1].
    record : Preprocessing
        How it was made (stored in ``metadata["preprocessing"]``).

    Raises
    ------
    ImageError
        An array that is not an image (wrong ndim or dtype, empty, all NaN, ...).
    """
    arr, layout = to_channels_last(image, rgb=rgb, channel_axis=channel_axis)
    dtype = arr.dtype
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise ImageError(f"image has no pixels (shape {arr.shape})")
    data = _as_float(arr)
    per_channel = _per_channel_limits(data, layout, dtype, scaling, contrast_limits, percentiles)
    if per_channel is not None:
        # Multichannel micrographs: each channel gets its own range (as Fiji and
        # napari show them), so a dim channel is not crushed by a bright one.
        scaling_used, channel_limits = per_channel
        scaled = np.empty(data.shape, np.float32)  # (data may be the caller's array)
        for k, (c_lo, c_hi) in enumerate(channel_limits):
            scaled[..., k] = _to_unit(data[..., k], c_lo, c_hi)
        data = scaled
    mixed, chosen = _mix(data, layout, channels)
    if not np.isfinite(mixed).all():
        raise ImageError(
            f"mixing the channels with {chosen!r} gives values beyond the float range; "
            "use weights of ordinary size (e.g. rows that sum to 1)"
        )
    if per_channel is not None:
        out = np.clip(mixed, 0.0, 1.0).astype(np.float32, copy=False)
        lo, hi = min(v[0] for v in channel_limits), max(v[1] for v in channel_limits)
    else:
        scaling_used, (lo, hi) = _limits(mixed, dtype, scaling, contrast_limits, percentiles)
        out = _to_unit(mixed, lo, hi)
    record = Preprocessing(
        input_shape=tuple(np.shape(image)),
        input_dtype=str(dtype),
        layout=layout,
        channels=chosen,
        scaling=scaling_used,
        limits=(lo, hi),
    )
    if scaling_used == "percentile":
        record.extra["percentiles"] = list(percentiles)
    if per_channel is not None:
        record.extra["per_channel"] = True
        record.extra["channel_limits"] = [[float(a), float(b)] for a, b in per_channel[1]]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), record


def _per_channel_limits(
    data: np.ndarray,
    layout: str,
    dtype: np.dtype,
    scaling: str,
    contrast_limits: Sequence[float] | None,
    percentiles: tuple[float, float],
) -> tuple[str, list[tuple[float, float]]] | None:
    """(scaling, per-channel limits) when a multichannel image is scaled from its data
    (percentiles or min-max, also by ``auto``); None otherwise (one range for all)."""
    if layout != "multichannel":
        return None
    per = [
        _limits(data[..., k], dtype, scaling, contrast_limits, percentiles)
        for k in range(data.shape[-1])
    ]
    used = per[0][0]
    if used not in ("percentile", "minmax"):
        return None
    return used, [lim for _, lim in per]


def normalize(x01: np.ndarray | Any) -> Any:
    """ImageNet-normalise a (..., 3, H, W) array or tensor in [0, 1]."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    if isinstance(x01, np.ndarray):
        return (x01 - mean) / std
    import torch

    m = torch.as_tensor(mean, device=x01.device, dtype=x01.dtype)
    s = torch.as_tensor(std, device=x01.device, dtype=x01.dtype)
    return (x01 - m) / s
