"""Working scale and tiled backbones: features of images of any size, in bounded memory.

A backbone sees the image at a *working scale*: ``s`` image pixels per patch (the
backbone's patch size ``p`` by default; "downsample by k" is ``s = k * p``). The image is
read in tiles of ``tile_size`` working pixels (the backbone's native input, e.g. 518 for
DINOv2, 224 for FeatUp's ViTs) that overlap by ``overlap`` of a tile; each tile's grid is
blended into one grid with feathered weights (linear ramps across each overlap, so the
weights of neighbouring tiles sum to one there), and finished rows of the grid are handed
to a sink as soon as no later tile touches them, so memory follows one row of tiles.

Alignment (exact at every scale): grid cell ``(i, j)`` covers image pixels
``[i*s, (i+1)*s) x [j*s, (j+1)*s)`` and is centred on pixel ``(i*s + (s-1)/2, ...)``;
in napari: ``scale = s * S``, ``translate = T + (s-1)/2 * S`` over an image layer with
scale ``S`` and translate ``T``. The image is reflect-padded on the bottom and right to
whole cells, as for an untiled run.

Cancel: :func:`iter_tiled_backbone` runs each tile in a helper thread and yields a
heartbeat event every ``heartbeat_s``; closing the generator stops the tile at its next
layer (a forward pre-hook raises), so a cancel takes effect in a fraction of a tile.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np
import torch

from .errors import SettingsError
from .progress import Progress

#: native input size (px) per backbone, where timm's pretrained cfg cannot be read
NATIVE_TILE = {
    "dino16": 224,
    "vit": 224,
    "clip": 224,
    "maskclip": 224,
    "resnet50": 224,
    "dinov2": 518,
    "dinov2-reg": 518,
    "dinov2-b": 518,
}
#: default overlap between neighbouring tiles, as a fraction of the tile
DEFAULT_OVERLAP = 0.25


def native_tile_for(spec) -> int:
    """The input size (px) a backbone spec's timm model was trained at, a whole number of
    patches: timm's pretrained cfg (no model built), else :data:`NATIVE_TILE`, else 16
    patches."""
    p, size = int(spec.stride), None
    try:
        from .backbones._timm import import_timm

        cfg = import_timm().models.get_pretrained_cfg(spec.timm_name)
        if cfg is not None and cfg.input_size:
            size = int(cfg.input_size[-1])
    except Exception:  # noqa: BLE001 - a custom or unknown model: fall back to the table
        size = None
    if size is None:
        size = NATIVE_TILE.get(spec.name, 16 * p)
    return max(p, size // p * p)


def native_tile_size(backbone) -> int:
    """The input size (px) a loaded backbone was trained at, a whole number of patches.

    Read from the model's timm ``pretrained_cfg["input_size"]`` where it is there, else
    as :func:`native_tile_for` its spec, else 16 patches.
    """
    p = int(backbone.patch_size)
    cfg = getattr(getattr(backbone, "model", None), "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return max(p, int(cfg["input_size"][-1]) // p * p)
    spec = getattr(backbone, "spec", None)
    if spec is not None and getattr(spec, "timm_name", None):
        return native_tile_for(spec)
    return max(p, NATIVE_TILE.get(getattr(backbone, "name", ""), 16 * p) // p * p)


@dataclass(frozen=True)
class WorkingScale:
    """``pixels_per_patch`` (s) image pixels per feature cell of a ``patch_size`` (p)
    backbone; the image is resampled by ``downsample = s / p`` before the backbone."""

    pixels_per_patch: int
    patch_size: int

    @property
    def downsample(self) -> float:
        """Image pixels per backbone pixel (1 = native resolution)."""
        return self.pixels_per_patch / self.patch_size

    def describe(self, pixel_size: float | None = None, unit: str = "µm") -> str:
        """E.g. ``"28 px per patch (downsample 2x; 9.1 µm per patch)"``."""
        text = f"{self.pixels_per_patch} px per patch (downsample {self.downsample:g}x"
        if pixel_size:
            text += f"; {self.pixels_per_patch * float(pixel_size):.3g} {unit} per patch"
        return text + ")"

    def metadata(self) -> dict:
        """Plain values for metadata."""
        s = float(self.pixels_per_patch)
        return {
            "pixels_per_patch": self.pixels_per_patch,
            "downsample": self.downsample,
            "lowres_scale": [s, s],
            "lowres_translate": [(s - 1) / 2, (s - 1) / 2],
        }


def resolve_scale(
    patch_size: int, downsample: float | None = None, pixels_per_patch: int | None = None
) -> WorkingScale:
    """The working scale from "downsample by k" or "pixels per patch" (not both).

    ``downsample * patch_size`` must be a whole number of pixels (e.g. 1.5 with 14 px
    patches is 21 px), so cells cover whole pixels and alignment stays exact.
    """
    p = int(patch_size)
    if downsample is not None and pixels_per_patch is not None and downsample != 1:
        raise SettingsError("give the working scale as downsample or pixels_per_patch, not both")
    if pixels_per_patch is None:
        k = 1.0 if downsample is None else float(downsample)
        if not (k > 0 and math.isfinite(k)):
            raise SettingsError(f"downsample must be a positive number, got {downsample!r}")
        s = k * p
        if abs(s - round(s)) > 1e-6:
            raise SettingsError(
                f"downsample {k:g} with {p} px patches is {s:g} px per patch; choose a "
                f"factor giving whole pixels (e.g. {round(s) / p:g}) or pass pixels_per_patch"
            )
        pixels_per_patch = round(s)
    if int(pixels_per_patch) != pixels_per_patch or pixels_per_patch < 1:
        raise SettingsError(
            f"pixels_per_patch must be a whole number >= 1, got {pixels_per_patch!r}"
        )
    return WorkingScale(int(pixels_per_patch), p)


@dataclass(frozen=True)
class TilePlan:
    """Tiles over a grid of ``grid`` cells: ``tile`` cells per tile side, ``overlap``
    cells shared by neighbours (at least), tile starts per axis."""

    grid: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    starts: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def n_tiles(self) -> int:
        """Number of backbone tiles."""
        return len(self.starts[0]) * len(self.starts[1])

    def tiles(self) -> list[tuple[int, int, int, int]]:
        """``(i0, i1, j0, j1)`` cell ranges, row-major."""
        (th, tw), (ys, xs) = self.tile, self.starts
        return [(y, y + th, x, x + tw) for y in ys for x in xs]

    def axis_weights(self, axis: int, start: int) -> np.ndarray:
        """Feather weights of a tile's cells along ``axis``: a linear ramp across each
        side that has a neighbour (none at the image border), never zero."""
        n, size = self.tile[axis], self.grid[axis]
        c = np.arange(n, dtype=np.float64) + 0.5
        w = np.ones(n)
        ramp = max(1, self.overlap)
        if start > 0:
            w = np.minimum(w, c / ramp)
        if start + n < size:
            w = np.minimum(w, (n - c) / ramp)
        return w

    def weights(self, i0: int, j0: int) -> np.ndarray:
        """Feathered blending weights (th, tw) of the tile whose grid origin is (i0, j0)."""
        return np.outer(self.axis_weights(0, i0), self.axis_weights(1, j0))

    def metadata(self, patch_size: int) -> dict:
        """Plain values for metadata (tile size, overlap ...)."""
        return {
            "tile_cells": list(self.tile),
            "tile_px": [t * patch_size for t in self.tile],
            "overlap_cells": self.overlap,
            "n_tiles": self.n_tiles,
            "blend": "feathered (linear ramps over the overlaps, weights sum to 1)",
        }


def _axis_starts(n: int, tile: int, step: int) -> tuple[int, ...]:
    if n <= tile:
        return (0,)
    starts = list(range(0, n - tile, step)) + [n - tile]  # the last tile ends at the border
    return tuple(sorted(set(starts)))


def plan_tiles(
    grid: tuple[int, int], patch_size: int, tile_size: int | None, overlap: float = DEFAULT_OVERLAP
) -> TilePlan:
    """Tiles of ``tile_size`` working px (rounded down to whole patches; None: one tile
    over the whole grid) overlapping by ``overlap`` (a fraction of a tile, < 1)."""
    h, w = int(grid[0]), int(grid[1])
    if tile_size is None:
        return TilePlan((h, w), (h, w), 0, ((0,), (0,)))
    cells = int(tile_size) // int(patch_size)
    if cells < 1:
        raise SettingsError(f"tile size {tile_size} px is smaller than one {patch_size} px patch")
    if not 0 <= float(overlap) < 1:
        raise SettingsError(f"tile overlap must be in [0, 1), got {overlap!r}")
    ov = min(cells - 1, round(float(overlap) * cells))
    step = max(1, cells - ov)
    th, tw = min(cells, h), min(cells, w)
    return TilePlan((h, w), (th, tw), ov, (_axis_starts(h, th, step), _axis_starts(w, tw, step)))


class _Blender:
    """Feathered accumulation of tile grids, one band of rows at a time.

    Rows above the current row of tiles are final: :meth:`advance` normalises them and
    passes ``(rows, block (C, R, w) float32)`` to ``sink``.
    """

    def __init__(self, plan: TilePlan, channels: int, sink: Callable[[slice, np.ndarray], None]):
        self.plan, self.sink = plan, sink
        th, (_, w) = plan.tile[0], plan.grid
        self.lo = 0
        self.acc = np.zeros((channels, th, w), np.float32)
        self.wsum = np.zeros((th, w), np.float32)

    def add(self, i0: int, j0: int, feats: np.ndarray) -> None:
        if i0 > self.lo:
            self.advance(i0)
        wt = self.plan.weights(i0, j0).astype(np.float32)
        r, c = feats.shape[-2:]
        self.acc[:, i0 - self.lo : i0 - self.lo + r, j0 : j0 + c] += feats * wt
        self.wsum[i0 - self.lo : i0 - self.lo + r, j0 : j0 + c] += wt

    def advance(self, new_lo: int) -> None:
        """Flush rows [lo, new_lo) (at most a band) and shift the band down."""
        n = min(new_lo, self.plan.grid[0]) - self.lo
        if n <= 0:
            return
        self.sink(slice(self.lo, self.lo + n), self.acc[:, :n] / self.wsum[:n])
        keep = self.acc.shape[1] - n
        self.acc[:, :keep] = self.acc[:, n:]
        self.acc[:, keep:] = 0
        self.wsum[:keep] = self.wsum[n:]
        self.wsum[keep:] = 0
        self.lo += n

    def finish(self) -> None:
        self.advance(self.plan.grid[0])


class _Abort(Exception):
    """Raised inside a backbone call by the cancel hook."""


#: the cancel flag of the tile running in this thread (a cached backbone may serve
#: several runs at once, on several threads: each hook checks its own thread's run)
_local = threading.local()


_hooks_lock = threading.Lock()


def _install_cancel_hooks(module: torch.nn.Module) -> None:
    """Once per module: a forward pre-hook on every leaf that raises when the current
    thread's run is cancelled. They stay (a few hundred cheap checks per forward):
    removing hooks while another thread runs the same cached backbone is not safe."""
    with _hooks_lock:
        if getattr(module, "_featup_cancel_hooks", False):
            return

        def check(*_):
            flag = getattr(_local, "flag", None)
            if flag is not None and flag.is_set():
                raise _Abort

        for m in module.modules():
            if not any(True for _ in m.children()):
                m.register_forward_pre_hook(check)
        module._featup_cancel_hooks = True


def iter_tiled_backbone(
    backbone,
    read_tile: Callable[[int, int, int, int], torch.Tensor],
    plan: TilePlan,
    sink: Callable[[slice, np.ndarray], None],
    *,
    heartbeat_s: float = 0.25,
) -> Generator[Progress, None, None]:
    """Run ``backbone`` tile by tile over ``plan`` and blend the grids into ``sink``.

    ``read_tile(i0, i1, j0, j1)`` gives the normalised working-scale input of cells
    ``[i0, i1) x [j0, j1)``: a (1, 3, (i1-i0)*p, (j1-j0)*p) tensor on the backbone's
    device. ``sink(rows, block)`` receives finished rows of the blended grid, top to
    bottom, as (C, R, w) float32. Yields one :class:`Progress` per tile (``done`` in
    tiles) plus heartbeats while a tile runs; closing the generator stops the running
    tile at its next layer.
    """
    blend = _Blender(plan, int(backbone.dim), sink)
    tiles = plan.tiles()
    flag = threading.Event()
    _install_cancel_hooks(backbone)

    def run(t):
        _local.flag = flag
        i0, i1, j0, j1 = t
        x = read_tile(i0, i1, j0, j1)
        with torch.inference_mode():
            return backbone(x)[0].float().cpu().numpy()

    pool = ThreadPoolExecutor(1, thread_name_prefix="featup-tile")
    fut = None
    try:
        for n, t in enumerate(tiles):
            fut = pool.submit(run, t)
            started = time.perf_counter()
            while True:
                try:
                    feats = fut.result(timeout=heartbeat_s)
                    break
                except FutureTimeout:
                    waited = time.perf_counter() - started
                    yield Progress(
                        n, len(tiles), f"tile {n + 1}/{len(tiles)} ({waited:.0f} s)", "backbone"
                    )
            fut = None
            blend.add(t[0], t[2], feats[:, : t[1] - t[0], : t[3] - t[2]])
            yield Progress(n + 1, len(tiles), f"tile {n + 1}/{len(tiles)} done", "backbone")
        blend.finish()
    finally:
        flag.set()  # a cancelled run stops the tile in flight at its next layer
        if fut is not None:
            # the tile's own outcome no longer matters: the run is being left
            with contextlib.suppress(Exception):
                fut.result()
        pool.shutdown(wait=True)
