"""Memory and time of a run before it starts, from the sizes and a quick calibration.

:func:`estimate_run` adds up what a run holds at its peak (model, one backbone tile's
activations, the blending band, the low-res grid and guidance image where the run keeps
them, the full-resolution features if asked for, the upsampler's working set) and times
one backbone tile and one small upsampler block on this machine (cached per process),
scaling them by the number of tiles and pixels. The command line prints it and refuses
a run that would not fit in the available memory unless told ``--yes``; the widget can
show :meth:`Estimate.summary` and ask.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .backbones import get_spec
from .tiling import DEFAULT_OVERLAP, plan_tiles, resolve_scale

#: resident memory of a process with torch, timm, zarr and a model loaded, before any
#: work (measured on Linux x86-64, torch 2.x: 700-1050 MB); a calibrated estimate reads
#: the process's own memory instead
RUNTIME_BYTES = 750 << 20
#: a run is "long" past this many seconds (the command line and widget say so)
LONG_SECONDS = 600.0
MB = 2**20
_CALIBRATION: dict[tuple, float] = {}


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``;
    None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_memory() -> int | None:
    """Resident memory of this process now (Linux; None elsewhere)."""
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / MB:.0f} MB"


def _fmt_time(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


@dataclass
class Estimate:
    """A run's expected peak memory and time, and the parts they are made of.

    Parameters
    ----------
    peak_bytes : int
        Expected peak resident memory of the run, in bytes.
    seconds : float or None
        Expected wall time in seconds; None when not calibrated.
    available_bytes : int or None
        Memory available now, in bytes (None when unknown).
    n_tiles : int
        Backbone tiles the run takes.
    grid : tuple of int
        (h, w) of the feature grid.
    parts : dict of str to int
        Bytes per part ("input image", "low-res grid", "guidance image", ...).
    timing : dict of str to float
        Seconds per part ("backbone", "upsampling", ...).
    notes : list of str
        Caveats shown with the estimate.
    """

    peak_bytes: int
    seconds: float | None
    available_bytes: int | None
    n_tiles: int
    grid: tuple[int, int]
    parts: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def exceeds_memory(self) -> bool:
        """Whether the peak is more than the memory available now."""
        return self.available_bytes is not None and self.peak_bytes > self.available_bytes

    @property
    def long(self) -> bool:
        """Whether the run is expected to take longer than ``LONG_SECONDS``."""
        return self.seconds is not None and self.seconds > LONG_SECONDS

    def summary(self) -> str:
        """One line, e.g. ``"peak ~2.1 GB of 19.4 GB available; ~14 min (441 tiles)"``."""
        avail = f" of {_fmt_bytes(self.available_bytes)} available" if self.available_bytes else ""
        text = f"peak memory ~{_fmt_bytes(self.peak_bytes)}{avail}"
        if self.seconds is not None:
            text += f"; time ~{_fmt_time(self.seconds)}"
        text += f" ({self.n_tiles} backbone tile{'s' if self.n_tiles != 1 else ''}"
        text += f", grid {self.grid[0]} x {self.grid[1]})"
        if self.exceeds_memory:
            text += ": MORE THAN THE AVAILABLE MEMORY"
        return text

    def details(self) -> str:
        """The parts, largest first, one per line."""
        lines = [
            f"  {k:<22} {_fmt_bytes(v)}"
            for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1])
        ]
        lines += [f"  time: {k:<16} {_fmt_time(v)}" for k, v in self.timing.items()]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def _is_cnn(spec) -> bool:
    return "resnet" in spec.timm_name.lower() or "convnext" in spec.timm_name.lower()


def _width(spec, model=None) -> int:
    """Token width of a ViT (from the model when loaded, else from the output width)."""
    width = getattr(model, "embed_dim", None) if model is not None else None
    if width:
        return int(width)
    return 768 if "clip" in spec.name.lower() else max(384, int(spec.dim))


def _tile_activation_bytes(spec, tile_cells: tuple[int, int], model=None) -> int:
    """Peak activations of one backbone call on a tile (float32, inference)."""
    t = tile_cells[0] * tile_cells[1] + 5
    if _is_cnn(spec):
        px = tile_cells[0] * tile_cells[1] * spec.stride**2
        return int(px * 64 * 4 * 3)  # the stride-4 stage at 256 channels dominates
    width = _width(spec, model)
    heads = width // 64
    attn = 3 * heads * t * t * 4  # scores, softmax, and the product's input
    mlp = 2 * t * 4 * width * 4
    return int(attn + mlp + 8 * t * width * 4)


def _model_bytes(spec) -> int:
    """Typical float32 weights of a backbone of this size (ViT-S 22M, B 86M, L 300M
    parameters; ResNet-50 25M)."""
    if _is_cnn(spec):
        return 100 * MB
    width = _width(spec)
    return {384: 90, 768: 350, 1024: 1200}.get(width, 4 * width * width * 12 * 12 // MB) * MB


def calibrate_backbone(bb, tile_px: tuple[int, int]) -> float:
    """Seconds for one backbone call on a tile (timed once per process, after one warm-up
    call at a small size)."""
    key = (bb.name, str(bb.device), str(bb.dtype), tuple(tile_px), torch.get_num_threads())
    if key not in _CALIBRATION:
        p = bb.patch_size
        with torch.inference_mode():
            bb(torch.zeros(1, 3, 2 * p, 2 * p, device=bb.device, dtype=bb.dtype))
            x = torch.randn(1, 3, *tile_px, device=bb.device).to(bb.dtype)
            t0 = time.perf_counter()
            bb(x)
            _CALIBRATION[key] = time.perf_counter() - t0
    return _CALIBRATION[key]


def calibrate_upsampler(up, dim: int, stride: int, channels: int = 3, device="cpu") -> float:
    """Seconds per output pixel to upsample ``channels`` projected channels with ``up``
    (a 24 x 24-cell block, timed once per process)."""
    key = (up.name, dim, stride, channels, str(device), torch.get_num_threads())
    if key not in _CALIBRATION:
        from .field import FeatureField

        cells = 24
        g = torch.Generator().manual_seed(0)
        low = torch.randn(1, dim, cells, cells, generator=g).to(device)
        img = torch.randn(1, 3, cells * stride, cells * stride, generator=g).to(device)
        f = FeatureField(low, img, up, (cells * stride, cells * stride))
        w = torch.randn(channels, dim, generator=g).numpy()
        t0 = time.perf_counter()
        f.project(w)
        _CALIBRATION[key] = (time.perf_counter() - t0) / (cells * stride) ** 2
    return _CALIBRATION[key]


def estimate_run(
    shape: tuple[int, int],
    backbone="dinov2",
    upsampler="bilinear",
    *,
    downsample: float | None = None,
    pixels_per_patch: int | None = None,
    tile_size: int | str | None = "auto",
    tile_overlap: float = DEFAULT_OVERLAP,
    highres: bool = False,
    highres_dtype: str = "float32",
    to_store: bool = False,
    pca: str = "full",
    input_bytes: int = 0,
    calibrate: bool = True,
    device: str = "cpu",
) -> Estimate:
    """Estimate one 2-D image's run: peak memory and time, before it starts.

    Parameters
    ----------
    shape : tuple of int
        (H, W) of the image, in pixels.
    backbone, upsampler : str or loaded object
        Names or loaded objects (loaded ones are timed as they are; names are timed with
        random weights, which cost the same).
    downsample, pixels_per_patch, tile_size, tile_overlap
        The working scale and backbone tiling, as for
        :func:`~napari_featup.pipeline.iter_extract`.
    highres : bool
        Whether the (C, H, W) map is materialised.
    highres_dtype : str
        Its dtype.
    to_store : bool
        The streaming path of :func:`~napari_featup.batch.extract_many` (grid written as
        it comes, colours per block) rather than
        :func:`~napari_featup.pipeline.iter_extract` (grid, guidance and optional
        ``highres`` in memory).
    pca : {"full", "lowres", "none"}
        Colours computed (as :class:`~napari_featup.to_store.ExtractSettings`).
    input_bytes : int
        Memory the input takes when read whole (0 for inputs read lazily or already in
        memory).
    calibrate : bool
        Time a tile and an upsampler block, and count this process's own memory now
        (models loaded, input read), instead of typical figures.
    device : str
        Where the run will be.

    Returns
    -------
    Estimate
    """
    from .backbones import Backbone, load_backbone
    from .upsamplers import Upsampler, load_upsampler, upsampler_info

    spec = backbone.spec if isinstance(backbone, Backbone) else get_spec(backbone)
    up_name = upsampler.name if isinstance(upsampler, Upsampler) else str(upsampler)
    info = upsampler_info(up_name)
    scale = resolve_scale(spec.stride, downsample, pixels_per_patch)
    s, p, c = scale.pixels_per_patch, spec.stride, spec.dim
    h, w = (int(v) for v in shape)
    grid = (math.ceil(h / s), math.ceil(w / s))
    if tile_size == "auto":
        from .tiling import native_tile_for, native_tile_size

        tile = (
            native_tile_size(backbone) if isinstance(backbone, Backbone) else native_tile_for(spec)
        )
    else:
        tile = None if not tile_size else int(tile_size)
    plan = plan_tiles(grid, p, tile, tile_overlap)
    th, tw = plan.tile
    hp, wp = grid[0] * s, grid[1] * s
    bb = None
    if calibrate:
        bb = (
            backbone
            if isinstance(backbone, Backbone)
            else load_backbone(spec.name, weights="random", device=device)
        )
    now = process_memory() if calibrate else None
    base = (
        {"this process now (runtime, models, input)": now}
        if now
        else {
            "runtime (torch, timm, zarr)": RUNTIME_BYTES,
            # building a model holds about twice its weights for a while
            "model": 2 * _model_bytes(spec),
        }
    )
    parts = {
        **base,
        "backbone tile": _tile_activation_bytes(
            spec, (th, tw), getattr(bb, "model", None) if bb is not None else None
        ),
        "tile input": th * tw * s * s * 3 * 4 * 4 + th * tw * p * p * 3 * 4 * 2,
        "blending band": 2 * c * th * grid[1] * 4,
    }
    if input_bytes:
        parts["input image"] = int(input_bytes)
    notes = []
    cls = info.cls
    whole = not to_store or not cls.linear or cls.fits_per_image
    if whole:
        parts["low-res grid"] = c * grid[0] * grid[1] * 4 * (2 if info.default_use_norm else 1)
        parts["guidance image"] = 3 * hp * wp * 4 + 3 * 512 * wp * 4 * 4
        # one 256 MB band of upsampled rows; upsamplers with kernels hold them beside it
        # (bilinear at 1200 x 1100, 384-d: +163 MB measured for the colours)
        parts["upsampler tiles"] = (1 if up_name == "bilinear" else 2) * (256 * MB)
        if cls.fits_per_image:
            notes.append(f"{up_name} fits to each image: add its fit (not estimated here)")
    else:
        blk = min(1024, max(h, w)) // s + 2 * 12
        parts["colour block"] = blk * blk * (c * 4 + s * s * 3 * 4 * 4) + 3 * 1024 * 1024 * 4 * 4
        parts["PCA sample"] = 20000 * c * 4 + 64 * MB
    if up_name == "featup-jbu":
        # its kernel cache (512 MB) on a whole image; per block, its working set
        # (the 16x level's windows and tap matrices), measured 400-500 MB
        parts["JBU working set"] = 512 * MB if whole else 480 * MB
    # upsamplers that count their own cost (AnyUp, JAFAR: encoder working memory and
    # the attention weights kept as kernels, or else the dense field the PCA reads)
    cost = cls.cost(c, grid, (h, w))
    if cost is not None:
        dense = 4 * c * h * w if 4 * c * h * w <= 512 * MB else 2 * c * h * w
        parts[f"{up_name} encoder and weights"] = cost[1] + (
            cost[2] if cost[2] is not None else dense
        )
    if highres and not to_store:
        parts["full-res features"] = (
            c * h * w * torch.empty(0, dtype=getattr(torch, highres_dtype)).element_size()
        )
    peak = int(sum(parts.values()))

    seconds, timing = None, {}
    if bb is not None:
        t_tile = calibrate_backbone(bb, (th * p, tw * p))
        timing["backbone"] = plan.n_tiles * t_tile
        try:
            up = (
                upsampler
                if isinstance(upsampler, Upsampler)
                else load_upsampler(
                    up_name,
                    backbone=bb,
                    weights="random" if info.takes_weights else None,
                    device=bb.device,
                )
            )
            k = c if (highres and not to_store) else (3 if pca == "full" else 0)
            if k and cls.linear and not cls.fits_per_image:
                t_px = calibrate_upsampler(up, c, s, 3, bb.device)
                timing["upsampling"] = h * w * t_px * (k / 3 if k > 3 else 1)
            elif k and cost is not None:  # a timed 24 x 24-cell block, scaled by arithmetic
                block = (24 * s, 24 * s)
                t_block = calibrate_upsampler(up, c, s, 3, bb.device) * block[0] * block[1]
                timing["upsampling"] = t_block * cost[0] / cls.cost(c, (24, 24), block)[0]
        except Exception as exc:  # noqa: BLE001 - an estimate must never fail the run
            notes.append(f"upsampler not timed ({type(exc).__name__}: {exc})")
        seconds = float(sum(timing.values()))
        notes.append(
            f"timed on this machine: {t_tile:.2f} s per tile, {torch.get_num_threads()} threads"
        )
    return Estimate(peak, seconds, available_memory(), plan.n_tiles, grid, parts, timing, notes)
