"""From a numpy image to aligned low-res and full-res features.

:func:`iter_extract` is a generator: it yields :class:`Progress` events between
steps (a consumer that stops iterating cancels the run there) and returns a
:class:`FeatureResult`. napari runs it in a ``thread_worker``; the command line drives
it with a progress bar; :func:`extract_features` simply runs it to the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import numpy as np
import torch

from . import __version__
from .analysis import PCAProjection, fit_pca
from .backbones import Backbone, load_backbone
from .errors import BackboneError, SettingsError
from .field import FeatureField
from .preprocess import Preprocessing
from .progress import Progress, drive, relay
from .source import Prepared, as_source, preprocessing_of
from .tiling import (
    DEFAULT_OVERLAP,
    TilePlan,
    WorkingScale,
    iter_tiled_backbone,
    native_tile_size,
    plan_tiles,
    resolve_scale,
)
from .upsamplers import Upsampler, channel_norm, load_upsampler

RANDOM_WEIGHTS_LABEL = "random (untrained weights, for tests and demos only)"


@dataclass
class FeatureResult:
    """Features of one image.

    Cell (i, j) of ``lowres`` is centred on image pixel (i*s + (s-1)/2, j*s + (s-1)/2)
    with s = ``metadata["stride"]``.

    Parameters
    ----------
    lowres : numpy.ndarray
        (C, h, w) float32 backbone grid (after FeatUp's channel norm if used).
    highres : numpy.ndarray or None
        (C, H, W) on the input's pixel grid, or None when not materialised.
    metadata : dict
        How the features were made (backbone, upsampler, weights, stride,
        preprocessing, ...); JSON-serialisable.
    field : FeatureField or None
        Answers PCA and similarity queries at full resolution without ``highres``.
    pca : PCAProjection or None
        The projection the colours were made with.
    """

    lowres: np.ndarray
    highres: np.ndarray | None
    metadata: dict
    field: FeatureField | None = None
    pca: PCAProjection | None = dc_field(default=None, repr=False)

    def fit_pca(self, n_components: int = 3, **kwargs: Any) -> PCAProjection:
        """Fit (and keep) a PCA on the low-res features."""
        self.pca = fit_pca(self.lowres, n_components=n_components, **kwargs)
        return self.pca


def iter_extract(
    image: Any,
    backbone: str | Backbone = "dinov2",
    upsampler: str | Upsampler = "bilinear",
    *,
    weights: str = "pretrained",
    device: str | torch.device = "auto",
    precision: str = "float32",
    use_norm: bool | None = None,
    upsampler_weights: Any = None,
    upsampler_options: dict | None = None,
    highres: bool = True,
    highres_dtype: str = "float32",
    rgb: bool | None = None,
    channel_axis: int | None = None,
    channels: Sequence[Any] | None = None,
    scaling: str = "auto",
    contrast_limits: Sequence[float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    tile_budget_mb: float = 256,
    downsample: float | None = None,
    pixels_per_patch: int | None = None,
    tile_size: int | str | None = "auto",
    tile_overlap: float = DEFAULT_OVERLAP,
) -> Generator[Progress, None, FeatureResult]:
    """Features of one 2-D image, as a generator of :class:`Progress` events.

    ``result = drive(iter_extract(...))`` (or ``yield from``) gives the
    :class:`FeatureResult`; closing the generator cancels the run between steps.

    Parameters
    ----------
    image : array-like
        numpy or dask array as napari holds it: (H, W) grey, (H, W, 3|4) RGB(A), or
        multichannel with ``channel_axis``; any numeric or bool dtype.
    backbone : str or Backbone
        A registered name (:func:`list_backbones`), ``timm:<name>``, or a loaded backbone.
    upsampler : str or Upsampler
        A registered name (:func:`list_upsamplers`) or a built upsampler.
    weights : str
        Backbone weights: ``"pretrained"`` (download once, cached), ``"random"``
        (untrained, for trying the code) or a file path.
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:N"``, ``"mps"``.
    precision : {"float32", "float16", "bfloat16"}
        Backbone precision; half precision needs a GPU.
    use_norm : bool, optional
        FeatUp's channel LayerNorm before upsampling (None: the upsampler's default).
    upsampler_weights : optional
        The upsampler's weights: None (published checkpoint), ``"random"`` or a path.
    upsampler_options : dict, optional
        The upsampler's typed options (:func:`~napari_featup.upsamplers.upsampler_info`).
    highres : bool
        Materialise the (C, H, W) map; False keeps only the lazily evaluated field.
    highres_dtype : str
        dtype of ``highres`` (``"float32"`` or ``"float16"``).
    rgb, channel_axis, channels, scaling, contrast_limits, percentiles
        How the image becomes the backbone's RGB input (:func:`prepare_image`).
    tile_budget_mb : float
        Memory per upsampler tile, in MiB.
    downsample : float, optional
        Working scale k: ``k * patch_size`` image pixels per feature cell.
    pixels_per_patch : int, optional
        The working scale as image pixels per feature cell (instead of ``downsample``).
    tile_size : int, "auto" or None
        Backbone input tile in working pixels: ``"auto"`` the backbone's native size,
        None the whole image at once (docs/large-images.md).
    tile_overlap : float
        Overlap of neighbouring tiles, as a fraction of a tile.

    Yields
    ------
    Progress

    Returns
    -------
    FeatureResult

    Raises
    ------
    ImageError, BackboneError, UpsamplerError, WeightsUnavailableError, WeightsFileError
        Bad input, names or options, or weights that cannot be had.
    """
    t_start = time.perf_counter()
    prepared = preprocessing_of(
        as_source(image, rgb=rgb, channel_axis=channel_axis),
        channels=channels,
        scaling=scaling,
        contrast_limits=contrast_limits,
        percentiles=percentiles,
    )
    height, width = prepared.source.shape
    # Each event announces the step about to run (done = its number); the backbone's
    # tiles, a per-image fit and the high-res tiles are relayed into their step's range,
    # so a bar keeps moving.
    n_steps = 4 + (1 if highres else 0)

    yield Progress(1, n_steps, "loading backbone", stage="backbone")
    bb = (
        backbone
        if isinstance(backbone, Backbone)
        else load_backbone(backbone, weights=weights, device=device, precision=precision)
    )
    scale = resolve_scale(bb.patch_size, downsample, pixels_per_patch)
    check_image_size(bb, scale, height, width)
    s, dev = scale.pixels_per_patch, bb.device
    grid = (-(-height // s), -(-width // s))
    plan = plan_tiles(grid, bb.patch_size, resolve_tile_size(bb, tile_size), tile_overlap)

    name = f"running backbone {bb.name}"
    yield Progress(2, n_steps, name, stage="backbone")
    low = np.empty((bb.dim,) + grid, np.float32)

    def sink(rows: slice, block: np.ndarray) -> None:
        low[:, rows] = block

    def read_tile(i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        return prepared.working(i0, i1, j0, j1, s, bb.patch_size, dev).to(bb.dtype)

    tiles = iter_tiled_backbone(bb, read_tile, plan, sink)
    yield from relay(tiles, 2, 3, n_steps, prefix=f"{name}: " if plan.n_tiles > 1 else "")
    lowres = torch.from_numpy(low)[None].to(dev)
    padded = full_guidance(prepared, grid, s, dev)

    yield Progress(3, n_steps, "loading upsampler", stage="upsampler")
    up = (
        upsampler
        if isinstance(upsampler, Upsampler)
        else load_upsampler(
            upsampler,
            backbone=bb,
            use_norm=use_norm,
            weights=upsampler_weights,
            device=dev,
            **(upsampler_options or {}),
        )
    )
    if use_norm is not None and isinstance(upsampler, Upsampler):
        up.use_norm = bool(use_norm)
    if up.use_norm:
        lowres = channel_norm(lowres)
    yield from relay(up.iter_fit(lowres, padded), 3, 4, n_steps, stage="fit")
    feature_field = FeatureField(
        lowres, padded, up, (height, width), tile_budget_bytes=int(tile_budget_mb * 2**20)
    )

    hr = None
    yield Progress(4, n_steps, f"upsampling with {up.name}", stage="upsample")
    if highres:
        hr = np.empty((bb.dim, height, width), dtype=np.dtype(highres_dtype))
        tiles = list(feature_field.iter_tiles())
        for i, rows in enumerate(tiles):
            hr[:, rows] = feature_field.highres_rows(rows).cpu().numpy()
            if i + 1 < len(tiles):
                msg = f"upsampling with {up.name}: tile {i + 1}/{len(tiles)}"
                yield Progress(4 + (i + 1) / len(tiles), n_steps, msg, stage="upsample")
        yield Progress(5, n_steps, "done", stage="done")

    metadata = _metadata(bb, up, prepared.record, lowres, padded, (height, width), hr is not None)
    metadata.update(scale_metadata(scale, plan, bb.patch_size, prepared.source.origin))
    metadata["seconds"] = round(time.perf_counter() - t_start, 3)
    return FeatureResult(
        lowres=lowres[0].cpu().numpy(), highres=hr, metadata=metadata, field=feature_field
    )


def _metadata(
    bb: Backbone,
    up: Upsampler,
    prep: Preprocessing,
    lowres: torch.Tensor,
    padded: torch.Tensor,
    size: tuple[int, int],
    has_highres: bool,
) -> dict:
    s = bb.patch_size
    grid = tuple(int(v) for v in lowres.shape[-2:])
    native = up.native_size(grid, tuple(padded.shape[-2:]))
    return {
        "napari_featup_version": __version__,
        "backbone": bb.name,
        "timm_model": bb.spec.timm_name,
        "backbone_info": bb.spec.describe(),
        "weights": RANDOM_WEIGHTS_LABEL if bb.weights == "random" else bb.weights,
        "random_weights": bb.weights == "random",
        "upsampler": up.name,
        "upsampler_info": up.extra_metadata(),
        "use_norm": bool(up.use_norm),
        "device": str(bb.device),
        "precision": str(bb.dtype).replace("torch.", ""),
        "preprocessing": prep.to_dict(),
        "image_size": list(size),
        "padded_size": [int(v) for v in padded.shape[-2:]],
        "padding": "reflect, bottom and right, to whole feature cells",
        "stride": s,
        "grid": list(grid),
        "dim": bb.dim,
        # napari puts pixel centres on integers: grid cell (i, j) is centred on pixel
        # (i*s + (s-1)/2, j*s + (s-1)/2). Multiply by the image layer's scale and add its
        # translate to place the low-res layer in world coordinates.
        "lowres_scale": [float(s), float(s)],
        "lowres_translate": [(s - 1) / 2, (s - 1) / 2],
        "upsampler_native_size": [int(v) for v in native],
        "highres": (
            f"{up.name} output at {native[0]} x {native[1]}, resized to the padded image "
            f"({padded.shape[-2]} x {padded.shape[-1]}) and cropped to {size[0]} x {size[1]}"
            if has_highres
            else None
        ),
    }


def resolve_tile_size(bb: Backbone, tile_size: int | str | None) -> int | None:
    """Backbone input tile (px): ``"auto"`` the backbone's native size, None or 0 the
    whole image at once, else a number of pixels (rounded down to whole patches)."""
    if tile_size == "auto":
        return native_tile_size(bb)
    if tile_size is None or tile_size == 0:
        return None
    try:
        return int(tile_size)
    except (TypeError, ValueError):
        raise SettingsError(
            f"tile size must be 'auto', a number of pixels or None, got {tile_size!r}"
        ) from None


def check_image_size(bb: Backbone, scale: WorkingScale, height: int, width: int) -> None:
    """Raise a clear :class:`BackboneError` for an image smaller than one cell."""
    s = scale.pixels_per_patch
    if s == bb.patch_size:
        bb.check_size(height, width)
    elif height < s or width < s:
        raise BackboneError(
            f"image is {height} x {width} px; at {scale.describe()} one feature cell is "
            f"{s} x {s} px: choose a smaller downsample"
        )


def full_guidance(
    prepared: Prepared, grid: tuple[int, int], s: int, device, band: int = 512
) -> torch.Tensor:
    """The normalised image reflect-padded to whole cells, (1, 3, h*s, w*s) float32,
    filled in bands of rows so the float copies of the whole image never coexist."""
    hp, wp = grid[0] * s, grid[1] * s
    out = torch.empty((1, 3, hp, wp), dtype=torch.float32, device=device)
    for r0 in range(0, hp, band):
        r1 = min(hp, r0 + band)
        out[:, :, r0:r1] = prepared.guidance(r0, r1, 0, wp, device)
    return out


def scale_metadata(scale: WorkingScale, plan: TilePlan, patch_size: int, origin: dict) -> dict:
    """Working scale, tiling and source facts for a result's metadata."""
    out = scale.metadata()
    out["stride"] = scale.pixels_per_patch
    out["patch_size"] = int(patch_size)
    out["tiling"] = plan.metadata(patch_size)
    if origin:
        out["source"] = dict(origin)
    return out


def extract_features(
    image: Any,
    backbone: str | Backbone = "dinov2",
    upsampler: str | Upsampler = "bilinear",
    *,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> FeatureResult:
    """Features of one 2-D image: low-res grid, full-res map and metadata.

    Parameters
    ----------
    image : array-like
        As napari holds it (see :func:`iter_extract`).
    backbone : str or Backbone
        A registered name, ``timm:<name>``, or a loaded backbone.
    upsampler : str or Upsampler
        A registered name or a built upsampler.
    progress : callable, optional
        Called with each :class:`Progress`.
    should_cancel : callable, optional
        Polled at every step; when it returns True the run stops.
    **kwargs
        The keywords of :func:`iter_extract` (``weights``, ``device``, ``highres``,
        ``downsample``, ``tile_size``, ...).

    Returns
    -------
    FeatureResult

    Raises
    ------
    Cancelled
        ``should_cancel`` returned True.
    ImageError, BackboneError, UpsamplerError, WeightsUnavailableError, WeightsFileError
        As :func:`iter_extract`.
    """
    return drive(iter_extract(image, backbone, upsampler, **kwargs), progress, should_cancel)
