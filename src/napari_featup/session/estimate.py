"""How long a run will take and how much memory it needs, before it starts (no Qt).

A rough model, good to a factor of about two: the backbone's arithmetic (ViT layers
or ResNet-50) at the speed this machine showed (:func:`calibrate`, run by the widget's
warm-up; otherwise a default per device), the upsampler's per-pixel cost, per-image
fits from their settings (views and steps, as timed in docs/implicit.md on one CPU
core), and the arrays a run keeps. The widget shows it under Run, the command line
prints it before extracting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..backbones import get_spec
from ..compact import COMPACT_BUDGET_BYTES
from ..errors import UpsamplerError
from ..estimate import LONG_SECONDS, available_memory
from ..tiling import DEFAULT_OVERLAP, native_tile_for, plan_tiles
from ..upsamplers import upsampler_info

#: effective backbone GFLOP/s of one quiet CPU core of the machine the per-pixel costs
#: below were timed on; a calibration rescales every CPU figure by this machine's speed
REFERENCE_GFLOPS = 40.0
#: speed-up of a GPU over that core (ViT-S inference, float32)
DEVICE_SPEEDUP = {"cuda": 25.0, "mps": 5.0}
#: seconds per channel per output pixel on the reference core (from the 1024 x 1024
#: runs of benchmarks/bench_interaction.py, less the bilinear run); upsamplers not
#: listed take the figure of their kind
PER_CHANNEL_PIXEL_S = {
    "bilinear": 5e-9,
    "jbu-classic": 1.2e-7,
    "featup-jbu": 1.4e-7,
    "guided-fit": 2.5e-7,
    "linear": 1.5e-7,
    "other": 2.5e-7,
}
#: per-image implicit fit on the reference core at 224 x 224 (docs/implicit.md): a
#: view costs VIEW_S, a step STEP_BASE_S + per scored view (a window or a whole view)
VIEW_S = 0.16
STEP_BASE_S = 0.3
STEP_WINDOW_S = 0.045
STEP_WHOLE_VIEW_S = 0.16
RENDER_PIXEL_S = 6e-5  # the fitted model, per output pixel
FIT_MEMORY_BYTES = 1300 << 20  # peak of a fit at its largest fit size (322 x 322)

_calibrated_gflops: dict[str, float] = {}


#: GMAC at 224 x 224 of the convolutional backbones, by timm name prefix
_CONV_GMAC = {"resnet50": 4.1, "convnext_tiny": 4.5, "convnext_small": 8.7, "convnext_base": 15.4}


def _vit_shape(timm_name: str) -> tuple[int, int]:
    """(width, layers) of a ViT from its timm name (ViT-S unless it says otherwise)."""
    name = timm_name.lower()
    for key, shape in (("large", (1024, 24)), ("base", (768, 12)), ("tiny", (192, 12))):
        if key in name:
            return shape
    return 384, 12


def _conv(timm_name: str) -> float | None:
    name = timm_name.lower()
    return next((g for k, g in _CONV_GMAC.items() if name.startswith(k)), None)


def backbone_gflop(backbone: str, size: Sequence[int]) -> float:
    """Arithmetic of one backbone pass over an (H, W) image, in GFLOP (from the timm
    model's family and size: ViT layers, or a convolutional net's cost at 224 px)."""
    spec = get_spec(backbone)
    h, w = (int(v) for v in size)
    conv = _conv(spec.timm_name)
    if conv is not None:
        return 2 * conv * h * w / 224**2
    n = math.ceil(h / spec.stride) * math.ceil(w / spec.stride)
    d, layers = _vit_shape(spec.timm_name)
    return 2 * layers * (12 * n * d * d + 2 * n * n * d) / 1e9


def tiled_gflop(backbone: str, size: Sequence[int]) -> tuple[float, int, tuple[int, int]]:
    """(GFLOP, tiles, tile px) of a run at the native scale in the backbone's native
    tiles with the default overlap, as the widget runs it (a ViT's cost per tile, not
    the square of the whole image's tokens)."""
    spec = get_spec(backbone)
    h, w = (int(v) for v in size)
    p = int(spec.stride)
    plan = plan_tiles((-(-h // p), -(-w // p)), p, native_tile_for(spec), DEFAULT_OVERLAP)
    tile = (plan.tile[0] * p, plan.tile[1] * p)
    return plan.n_tiles * backbone_gflop(backbone, tile), plan.n_tiles, tile


def calibrate(device: str, backbone: str, size: Sequence[int], seconds: float) -> float:
    """Record that a backbone pass over ``size`` took ``seconds`` on ``device``; later
    estimates for that device use this speed. Returns it (GFLOP/s)."""
    gflops = backbone_gflop(backbone, size) / max(seconds, 1e-6)
    _calibrated_gflops[_kind(device)] = gflops
    return gflops


def _kind(device: str) -> str:
    d = str(device)
    if d == "auto":
        from ..devices import resolve_device

        d = str(resolve_device("auto"))
    return d.split(":")[0]


def _speed(device: str, threads: int) -> tuple[float, bool]:
    """(effective GFLOP/s, calibrated?) of ``device``."""
    kind = _kind(device)
    if kind in _calibrated_gflops:
        return _calibrated_gflops[kind], True
    base = REFERENCE_GFLOPS * max(1, min(threads, 8)) ** 0.7
    return base * DEVICE_SPEEDUP.get(kind, 1.0), False


@dataclass
class Estimate:
    """Expected seconds (``low``-``high``) and peak memory of a run."""

    seconds: float
    memory_bytes: int
    device: str
    calibrated: bool
    tips: list[str] = field(default_factory=list)
    #: memory available now (None where unknown); ``large``: the run streams into a
    #: feature store and shows dask-backed layers (:mod:`.large`)
    available_bytes: int | None = None
    large: bool = False

    @property
    def exceeds_memory(self) -> bool:
        """More than the memory available now."""
        return self.available_bytes is not None and self.memory_bytes > self.available_bytes

    @property
    def needs_confirmation(self) -> bool:
        """Worth asking before it starts: beyond the available memory, or longer than
        :data:`~napari_featup.estimate.LONG_SECONDS` (at the high end of its range)."""
        return self.exceeds_memory or self.seconds > LONG_SECONDS

    @property
    def low(self) -> float:
        return self.seconds / 2

    @property
    def high(self) -> float:
        return self.seconds * 2

    @property
    def long(self) -> bool:
        """Over a minute: worth a warning before Run."""
        return self.seconds > 60

    def text(self) -> str:
        """One line: "about 4 min (2-8 min), 1.3 GB on cpu" plus tips."""
        mem = self.memory_bytes / 2**30
        mem_text = f"{mem:.1f} GB" if mem >= 0.1 else f"{self.memory_bytes / 2**20:.0f} MB"
        out = (
            f"about {_duration(self.seconds)} ({_duration(self.low)}–"
            f"{_duration(self.high)}), {mem_text} on {self.device}"
        )
        if self.exceeds_memory:
            out += f": MORE than the {self.available_bytes / 2**30:.1f} GB available"
        return " ".join([out + "."] + self.tips)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_run(
    backbone: str,
    upsampler: str,
    size: Sequence[int],
    *,
    planes: int = 1,
    device: str = "cpu",
    options: dict | None = None,
    threads: int = 1,
    flag: str = "Options: settings=preview",
    large: bool | None = None,
    downsample: float = 1.0,
    tiled: bool = True,
) -> Estimate:
    """Estimate a run of ``planes`` (H, W) planes; ``flag`` names how a user asks for
    the implicit preview (the widget's Options field, ``--upsampler-option`` on the
    command line) in the tip offered on CPU."""
    spec = get_spec(backbone)
    h, w = (int(v) for v in size)
    gflops, calibrated = _speed(device, threads)
    kind = _kind(device)
    slow = REFERENCE_GFLOPS / gflops  # reference-core seconds -> seconds here
    info = upsampler_info(upsampler)
    channels = spec.dim
    k = float(downsample or 1.0)  # the backbone sees the image k times smaller
    work = (max(1, round(h / k)), max(1, round(w / k)))
    if tiled:
        gflop, n_tiles, tile = tiled_gflop(backbone, work)
    else:
        gflop, n_tiles, tile = backbone_gflop(backbone, work), 1, work
    seconds = gflop / gflops
    if large is None:
        from .large import use_large_path

        large = use_large_path((h, w), upsampler)
    # the worker evaluates the C-channel field once (norms and compact field) and
    # three channels for the PCA colours; a large run neither (its layers are
    # computed per chunk as they are shown)
    grid = (math.ceil(work[0] / spec.stride), math.ceil(work[1] / spec.stride))
    cost = None if large else info.cls.cost(channels, grid, (h, w), _options(upsampler, options))
    if cost is None:
        per = PER_CHANNEL_PIXEL_S.get(
            info.name, PER_CHANNEL_PIXEL_S["linear" if info.cls.linear else "other"]
        )
        seconds += per * (0 if large else channels + 3) * h * w * slow
    else:  # counted by the upsampler (attention ones: its encoder and its keys)
        seconds += cost[0] / gflops
    if large:
        from ..estimate import estimate_run as core_estimate

        memory = core_estimate(
            (h, w),
            backbone,
            upsampler,
            to_store=True,
            calibrate=False,
            downsample=k if k != 1 else None,
            tile_size="auto" if tiled else None,
        ).peak_bytes
    else:
        memory = _memory(spec, channels, (h, w), planes, tile, k)
    tips: list[str] = []
    if large:
        tips.append(
            f"Large image: {n_tiles} backbone tiles into a feature store, layers computed "
            "per visible chunk."
        )
    if info.name == "featup-implicit":  # its fit's cost follows its own settings
        seconds += _implicit_seconds(options or {}, (h, w), slow)
        seconds += RENDER_PIXEL_S * h * w * slow
        memory += FIT_MEMORY_BYTES + _dense_bytes(128, h * w)
        settings = str((options or {}).get("settings", "fast"))
        if kind == "cpu" and settings != "preview":
            preview = estimate_run(
                backbone,
                upsampler,
                size,
                planes=planes,
                device=device,
                options={"settings": "preview"},
                threads=threads,
            )
            tips.append(f"On CPU, {flag} takes about {_duration(preview.seconds)}.")
    elif cost is not None:  # its working memory, and its kernels or the dense field
        memory += cost[1] + (cost[2] if cost[2] is not None else _dense_bytes(channels, h * w))
    elif not info.cls.linear:
        memory += _dense_bytes(channels, h * w)  # a non-linear field is kept dense
    avail = available_memory()
    return Estimate(seconds * planes, int(memory), kind, calibrated, tips, avail, large)


def _options(upsampler: str, options: dict | None):
    """The upsampler's typed options, or its defaults when these are not valid (the
    run reports them)."""
    from ..upsamplers import make_options

    try:
        return make_options(upsampler, options or {})
    except (UpsamplerError, ValueError):
        return make_options(upsampler, {})


def _dense_bytes(channels: int, pixels: int) -> int:
    """A kept dense field: float32 up to 512 MB, float16 beyond (FeatureField)."""
    return 4 * channels * pixels if 4 * channels * pixels <= 512 << 20 else 2 * channels * pixels


def _memory(spec, channels: int, size: tuple, planes: int, tile: tuple, k: float = 1.0) -> int:
    h, w = size
    th, tw = tile
    n = math.ceil(th / spec.stride) * math.ceil(tw / spec.stride)  # tokens of one tile
    d, layers = _vit_shape(spec.timm_name)
    conv = _conv(spec.timm_name) is not None
    weights = 4 * 12 * layers * d * d if not conv else 100 << 20
    # activations: tokens x width a few times over, and one layer's attention maps
    backbone = 40 * n * d + (4 * n * n * d // 64 if not conv else 64 * th * tw * 4)
    tiles = min(256 << 20, 16 * channels * h * w)  # FeatureField's row tiles
    rank = min(channels, max(8, COMPACT_BUDGET_BYTES // max(1, 4 * h * w)))
    # per pixel: the plane read (up to float32 x 3), the normalised guidance (float32 x
    # 3), compact field; PCA and similarity layers
    kept = (12 + 12 + 4 * rank + 8) * h * w + 7 * h * w
    cell = spec.stride * k
    grid = channels * math.ceil(h / cell) * math.ceil(w / cell) * 4 * 2
    return weights + max(backbone, tiles) + (kept + grid) * planes


def _implicit_seconds(options: dict, size: tuple[int, int], slow: float) -> float:
    """Seconds of the fit ``options`` ask for, here."""
    from ..implicit import resolve_config

    fit_px = min(size[0] * size[1], 2 * 224 * 224) / 224**2

    def seconds(settings: str, overrides: dict) -> float:
        known = {k: v for k, v in overrides.items() if k not in ("settings", "seed")}
        try:
            cfg = resolve_config(settings, **known)
        except Exception:  # noqa: BLE001 - bad options fail later, with their own message
            cfg = resolve_config("fast")
        per_view = STEP_WINDOW_S if cfg.cells else STEP_WHOLE_VIEW_S
        step = STEP_BASE_S + per_view * cfg.batch
        return (cfg.views * VIEW_S + cfg.steps * step) * fit_px * slow

    return seconds(str(options.get("settings", "fast")), options)


def estimate_for(settings, layer) -> Estimate:
    """The estimate of a run of ``settings`` (a RunSettings) on image ``layer``."""
    import torch

    from ..upsamplers import parse_options
    from .geometry import image_geometry
    from .large import use_large_path

    geometry = image_geometry(layer, settings.channel_axis)
    planes = 1
    if geometry.leading and settings.slices == "all":
        planes = int(math.prod(geometry.leading))
    try:
        options = parse_options(settings.upsampler_options)
    except Exception:  # noqa: BLE001 - reported when Run is pressed
        options = {}
    return estimate_run(
        settings.backbone,
        settings.upsampler,
        geometry.size,
        planes=planes,
        device=settings.device,
        options=options,
        threads=torch.get_num_threads(),
        large=use_large_path(geometry.size, settings.upsampler, geometry.leading),
        downsample=float(settings.downsample),
        tiled=settings.tiles != "whole",
    )


def estimate_text(settings, layer, world_point=()) -> tuple[str, bool]:
    """The widget's estimate line for ``settings`` (a RunSettings) on image ``layer``:
    (text, over a minute or beyond the available memory?)."""
    est = estimate_for(settings, layer)
    return est.text(), est.long or est.exceeds_memory


def confirmation_text(est: Estimate) -> str:
    """What the widget asks before a run that :attr:`Estimate.needs_confirmation`."""
    why = []
    if est.exceeds_memory:
        why.append(
            f"needs about {est.memory_bytes / 2**30:.1f} GB, more than the "
            f"{est.available_bytes / 2**30:.1f} GB of memory available now (the viewer "
            "may be killed)"
        )
    if est.seconds > LONG_SECONDS:
        why.append(f"takes about {_duration(est.seconds)} (up to {_duration(est.high)})")
    return (
        "This run " + " and ".join(why) + ". Start it anyway? (Cancel stops a started run "
        "between tiles; choosing a smaller image, the displayed slice only or a faster "
        "upsampler makes it cheaper.)"
    )
