"""One image into a feature-store group, in memory that does not grow with the image.

:func:`iter_extract_to_store` runs the tiled backbone straight into the group's
``features`` array (finished rows of the blended grid are written as they come), fits
the PCA on a sample of cells read back, and writes the full-resolution PCA colours block
by block through :class:`~napari_featup.lazy.LazyField`. Nothing of the size of the
image times the channels is ever held; an upsampler that must see the whole image
(a per-image fit) gets it, in memory, as in :func:`~napari_featup.pipeline.iter_extract`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .analysis import PCAProjection, fit_pca
from .backbones import Backbone, get_spec, load_backbone
from .io import META_KEY
from .io.zarr_chunks import create_array, mark_complete
from .lazy import LazyField, blockwise
from .pipeline import (
    _metadata,
    check_image_size,
    full_guidance,
    resolve_tile_size,
    scale_metadata,
)
from .progress import Progress, relay
from .source import ImageSource, preprocessing_of
from .store import FeatureStore
from .tiling import DEFAULT_OVERLAP, iter_tiled_backbone, plan_tiles, resolve_scale
from .upsamplers import Upsampler, channel_norm, load_upsampler, upsampler_info

PCA_MODES = ("full", "lowres", "none")


@dataclass
class ExtractSettings:
    """Everything that decides an image's stored features (plain values, picklable).

    Parameters
    ----------
    backbone, upsampler, weights, device, precision, use_norm, upsampler_weights, upsampler_options
        As :func:`~napari_featup.pipeline.iter_extract`'s keywords.
    downsample, pixels_per_patch, tile_size, tile_overlap
        The working scale and backbone tiling, as there.
    rgb, channel_axis, channels, scaling, contrast_limits, percentiles
        How images become RGB (:func:`~napari_featup.preprocess.prepare_image`);
        ``channel_axis`` is an axis of the input array (a stack's other leading axes are
        its planes).
    features_dtype : {"float16", "float32"}
        dtype of the stored grid.
    pca : {"full", "lowres", "none"}
        Colours stored: full resolution too, the grid's only, or none.
    block : int, optional
        Pixels per side of a colour block (does not change the result); None: 1024 for
        bilinear, else 384, so a block of a guided upsampler takes about a second on a
        CPU and a cancel is quick.
    """

    backbone: str = "dinov2"
    upsampler: str = "bilinear"
    weights: str = "pretrained"
    device: str = "auto"
    precision: str = "float32"
    use_norm: bool | None = None
    upsampler_weights: str | None = None
    upsampler_options: dict = field(default_factory=dict)
    downsample: float | None = None
    pixels_per_patch: int | None = None
    tile_size: int | str | None = "auto"
    tile_overlap: float = DEFAULT_OVERLAP
    rgb: bool | None = None
    channel_axis: int | None = None
    channels: list | None = None
    scaling: str = "auto"
    contrast_limits: list | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)
    features_dtype: str = "float16"
    pca: str = "full"
    block: int | None = None

    def __post_init__(self):
        if self.pca not in PCA_MODES:
            raise ValueError(f"pca must be one of {PCA_MODES}, got {self.pca!r}")
        if self.features_dtype not in ("float16", "float32"):
            raise ValueError(
                f"features_dtype must be float16 or float32, not {self.features_dtype}"
            )

    @property
    def scale(self):
        """The working scale (from the backbone's patch size; no model is loaded)."""
        return resolve_scale(get_spec(self.backbone).stride, self.downsample, self.pixels_per_patch)

    def signature_settings(self) -> dict:
        """What the features depend on (not the device, nor the block size)."""
        out = asdict(self)
        for k in ("device", "block", "downsample"):
            out.pop(k)
        out["pixels_per_patch"] = self.scale.pixels_per_patch
        out["backbone"] = get_spec(self.backbone).name
        info = upsampler_info(self.upsampler)
        out["upsampler"] = info.name
        out["use_norm"] = info.default_use_norm if self.use_norm is None else bool(self.use_norm)
        out["percentiles"] = list(self.percentiles)
        return out


_MODELS: dict[tuple, tuple[Backbone, Upsampler]] = {}
_MODELS_LOCK = threading.Lock()  # worker threads of one process load a model once


def models_for(settings: ExtractSettings) -> tuple[Backbone, Upsampler]:
    """The backbone and upsampler, loaded once per process (a dask worker loads them
    for its first image and reuses them)."""
    key = (
        settings.backbone,
        settings.weights,
        settings.device,
        settings.precision,
        settings.upsampler,
        settings.use_norm,
        str(settings.upsampler_weights),
        repr(sorted(settings.upsampler_options.items())),
    )
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load_models(settings)
        return _MODELS[key]


def _load_models(settings: ExtractSettings) -> tuple[Backbone, Upsampler]:
    bb = load_backbone(settings.backbone, settings.weights, settings.device, settings.precision)
    up = load_upsampler(
        settings.upsampler,
        backbone=bb,
        use_norm=settings.use_norm,
        weights=settings.upsampler_weights,
        device=bb.device,
        **settings.upsampler_options,
    )
    return bb, up


def sample_pca(features: Any, max_samples: int = 20000, seed: int = 0) -> PCAProjection:
    """:func:`fit_pca` on cells of a (C, h, w) array read in row bands: the same cells
    ``fit_pca`` would draw from the whole grid, without holding it."""
    c, h, w = (int(v) for v in features.shape)
    n = h * w
    if n <= max_samples:
        return fit_pca(np.asarray(features[...], np.float32), max_samples=max_samples, seed=seed)
    idx = np.random.default_rng(seed).choice(n, max_samples, replace=False)
    rows = idx // w
    samples = np.empty((len(idx), c), np.float32)
    band = max(1, (64 << 20) // max(1, c * w * 4))
    for r0 in range(0, h, band):
        sel = np.nonzero((rows >= r0) & (rows < r0 + band))[0]
        if len(sel):
            block = np.asarray(features[:, r0 : r0 + band], np.float32)
            samples[sel] = block[:, rows[sel] - r0, idx[sel] % w].T
    return fit_pca(samples, max_samples=max_samples, seed=seed)


def colour_block(settings: ExtractSettings, up: Upsampler) -> int:
    """Side (px) of the blocks full-resolution colours are computed and stored in."""
    if settings.block:
        return int(settings.block)
    return 1024 if up.name == "bilinear" else 384


def _uint8(rgb01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)


def iter_extract_to_store(
    source: ImageSource,
    store: FeatureStore,
    name: str,
    settings: ExtractSettings,
    signature: dict,
) -> Generator[Progress, None, dict]:
    """Extract one image into group ``name`` of ``store`` (replacing it atomically).

    Yields :class:`Progress` over 5 steps (load, backbone tiles, PCA, colours, done);
    returns the image's metadata. Closing the generator leaves the store unchanged.
    """
    t0 = time.perf_counter()
    total = 5
    prepared = preprocessing_of(
        source,
        channels=settings.channels,
        scaling=settings.scaling,
        contrast_limits=settings.contrast_limits,
        percentiles=tuple(settings.percentiles),
    )
    height, width = source.shape
    yield Progress(0, total, "loading models", stage="backbone")
    bb, up = models_for(settings)
    factor = float(source.origin.get("level_factor", 1.0))
    scale = settings.scale
    if factor != 1:  # a pyramid level: the same cells, in that level's pixels
        scale = resolve_scale(bb.patch_size, None, round(scale.pixels_per_patch / factor))
    check_image_size(bb, scale, height, width)
    s = scale.pixels_per_patch
    grid = (-(-height // s), -(-width // s))
    tile = resolve_tile_size(bb, settings.tile_size)
    plan = plan_tiles(grid, bb.patch_size, tile, settings.tile_overlap)
    fdtype = np.dtype(settings.features_dtype)

    with store.writing(name) as g:
        feats = create_array(
            g, "features", shape=(bb.dim,) + grid, dtype=fdtype, chunks=(bb.dim, 32, 32)
        )

        def sink(rows: slice, block: np.ndarray) -> None:
            if up.use_norm:  # per cell, so per block equals on the whole grid
                block = channel_norm(torch.from_numpy(block)[None])[0].numpy()
            feats[:, rows] = block.astype(fdtype)

        def read_tile(i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
            return prepared.working(i0, i1, j0, j1, s, bb.patch_size, bb.device).to(bb.dtype)

        yield Progress(1, total, f"running backbone {bb.name}", stage="backbone")
        tiles = iter_tiled_backbone(bb, read_tile, plan, sink)
        yield from relay(tiles, 1, 2, total, prefix=f"backbone {bb.name}: ")

        meta = _metadata(
            bb,
            up,
            prepared.record,
            torch.empty((1, 0) + grid),
            torch.empty((1, 0, grid[0] * s, grid[1] * s)),
            (height, width),
            False,
        )
        meta.update(scale_metadata(scale, plan, bb.patch_size, source.origin))
        if factor != 1:
            meta["level0_lowres_scale"] = [s * factor] * 2
            meta["level0_lowres_translate"] = [factor * (s - 1) / 2] * 2
        meta["features_dtype"] = str(fdtype)
        meta["signature"] = signature

        pca = None
        if settings.pca != "none":
            yield Progress(2, total, "fitting PCA", stage="pca")
            pca = sample_pca(feats)
            meta["pca"] = pca.to_dict()
            low_rgb = create_array(
                g, "pca_lowres", shape=grid + (3,), dtype=np.uint8, chunks=(256, 256, 3)
            )
            band = max(1, (32 << 20) // (4 * bb.dim * grid[1]))
            for r0 in range(0, grid[0], band):
                low_rgb[r0 : r0 + band] = _uint8(
                    pca.to_rgb(np.asarray(feats[:, r0 : r0 + band], np.float32))
                )
        if settings.pca == "full":
            yield Progress(3, total, f"PCA colours with {up.name}", stage="colours")
            yield from relay(
                _write_colours(
                    g, feats, prepared, up, pca, s, grid, colour_block(settings, up), bb.device
                ),
                3,
                4,
                total,
                prefix="PCA colours: ",
            )
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        g.attrs.update(mark_complete({META_KEY: meta}))
    yield Progress(5, total, "done", stage="done")
    return meta


def _write_colours(
    g, feats, prepared, up, pca, s, grid, block, dev
) -> Generator[Progress, None, None]:
    """Full-resolution PCA colours (H, W, 3) uint8, block by block (or in row tiles of
    a whole-image field for upsamplers that need the whole image)."""
    height, width = prepared.source.shape
    out = create_array(g, "pca", shape=(height, width, 3), dtype=np.uint8, chunks=(block, block, 3))
    if blockwise(up):
        # each block is computed once: keep no crops nor kernels beyond it
        lazy = LazyField(feats, prepared, up, s, device=dev, cache_blocks=1, reuse_kernels=False)
        blocks = list(lazy.iter_blocks(block))
        for n, (r0, r1, c0, c1) in enumerate(blocks):
            out[r0:r1, c0:c1] = _uint8(lazy.pca_rgb(pca, r0, r1, c0, c1))
            yield Progress(n + 1, len(blocks), f"block {n + 1}/{len(blocks)}")
        return
    from .field import FeatureField

    low = torch.from_numpy(np.asarray(feats[...], np.float32))[None].to(dev)
    guide = full_guidance(prepared, grid, s, dev)
    yield from relay(up.iter_fit(low, guide), 0, 0.5, 1, stage="fit")
    f = FeatureField(low, guide, up, (height, width))
    w, b = (torch.from_numpy(np.asarray(v, np.float32)).to(dev) for v in pca.weight_bias())
    rows = list(f.iter_tiles(3 if f.linear else None))
    for n, r in enumerate(rows):
        with torch.inference_mode():
            if f.linear:
                t = f.kernels.project(f.lowres, w, b, r)[0, :, :, :width]
            else:
                t = torch.einsum("kc,crw->krw", w, f.highres_rows(r)) + b[:, None, None]
        out[r] = _uint8(pca.colorize(t.float().cpu().numpy()))
        yield Progress(0.5 + 0.5 * (n + 1) / len(rows), 1, f"rows {r.stop}/{height}")
