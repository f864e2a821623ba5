"""AnyUp (Wimmer et al., ICLR 2026): one learned upsampler for any backbone and any
channel count, re-implemented in plain PyTorch from the paper and the behaviour of the
public code (https://github.com/wimmerth/anyup, CC-BY-4.0); its release files load as
they are.

Each output pixel is a convex combination of the unmodified low-res feature vectors in a
window around it (about 4 x 4 cells of a 16 x 16 grid), weighted by the head-averaged
attention between a full-resolution image query and keys made from the image and the
features (all C channels, through a learned feature unification). Evaluated exactly in
row bands (see :mod:`.._attention.upsampler`), with sparse window weights
(:mod:`.window`) reusable for cheap projections. The guidance is the ImageNet-normalised
image, as AnyUp expects; features go in raw (``use_norm=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import UpsamplerError
from .._attention.upsampler import (
    RANDOM_LABEL,
    AttentionUpsampler,
    Prepared,
    read_state,
    release_file,
    release_path,
    seeded,
)
from .._registry import register_upsampler
from ..base import Kernels
from .model import GROUPS, HEADS, QK_DIM, WINDOW_RATIO, add_modules, key_head
from .window import WindowKernels, Windows, window_attend, window_bounds

#: the published checkpoints (torch.hub entries ``anyup`` and ``anyup_multi_backbone``)
RELEASES = {
    "anyup": "https://github.com/wimmerth/anyup/releases/download/checkpoint/anyup_paper.pth",
    "anyup-multi": (
        "https://github.com/wimmerth/anyup/releases/download/checkpoint_v2/anyup_multi_backbone.pth"
    ),
}
LICENCE = "CC-BY-4.0"
CITATION = (
    "Wimmer, Truong, Rakotosaona, Oechsle, Tombari, Schiele, Lenssen: AnyUp: Universal "
    "Feature Upsampling, ICLR 2026 (arXiv:2510.12764)"
)


@dataclass(frozen=True)
class AnyUpOptions:
    """``memory_mb``: working memory for encoding the image. Up to about
    ``memory_mb / 3`` kpx (1024 -> ~580 x 580) the encoders run once with their
    activations kept; larger images are encoded in chunks with one sweep per
    GroupNorm level (exact, about 3x the compute, memory of one chunk)."""

    memory_mb: int = 1024

    def __post_init__(self):
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be at least 64, got {self.memory_mb}")


def anyup_weights_file(name: str = "anyup", progress: bool = True) -> Path:
    """The published checkpoint ``name`` ("anyup" or "anyup-multi") in the cache."""
    return release_file(RELEASES[name], "anyup", progress=progress)


def download_weights(progress: bool = True) -> list[tuple[str, Path]]:
    """Fetch both published AnyUp checkpoints into the cache: (name, path) pairs."""
    return [(name, anyup_weights_file(name, progress)) for name in RELEASES]


@register_upsampler(
    "anyup",
    description=(
        "AnyUp: learned window attention, one model for any backbone (trained on DINOv2 ViT-S/14)"
    ),
    options=AnyUpOptions,
    takes_weights=True,
    licence=LICENCE,
    citation=CITATION,
)
class AnyUp(AttentionUpsampler):
    """AnyUp (see the module docstring). ``weights``: None (the release), a path, or
    ``"random"`` (seeded, untrained: shows it runs, nothing more)."""

    release_name = "anyup"
    groups = GROUPS

    def __init__(self, memory_mb: int = AnyUpOptions.memory_mb):
        super().__init__(memory_mb)
        add_modules(self, QK_DIM, HEADS)
        self.window_ratio = WINDOW_RATIO

    @classmethod
    def published_weights(
        cls, backbone: str, use_norm: bool | None = None, options: Any = None
    ) -> tuple[Path, str]:
        """The release file (one for every backbone): (cache path, URL)."""
        url = RELEASES[cls.release_name]
        return release_path(url, "anyup"), url

    @classmethod
    def build(
        cls,
        options: AnyUpOptions,
        *,
        backbone: Any = None,
        use_norm: bool = False,
        weights: Any = None,
        device: torch.device | None = None,
    ) -> AnyUp:
        with seeded(0):
            up = cls(memory_mb=options.memory_mb)
        up.use_norm = bool(use_norm)
        if isinstance(weights, str) and weights.lower() == "random":
            up.weights_source = RANDOM_LABEL
            return up
        if weights is None:
            path = anyup_weights_file(cls.release_name)
            up.release = cls.release_name
        elif isinstance(weights, (str, Path)):
            path = Path(weights)
        else:
            raise UpsamplerError(f"{cls.name}: weights must be a path or 'random', got {weights!r}")
        up.load_checkpoint(read_state(path), str(path))
        up.weights_source = str(path)
        return up

    # ------------------------------------------------------------ model pieces
    def key_head(self, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return key_head(self, pooled, feats)

    def geometry(self, size: tuple[int, int], grid: tuple[int, int]) -> Windows:
        return Windows.build(size, grid, self.window_ratio, self.rope.freqs.device)

    def attend(self, prep: Prepared, q, rows: slice, out: torch.Tensor | None, record=None):
        window_attend(prep.geometry, q, prep.keys, prep.values, rows, out, record)

    @classmethod
    def keys_per_pixel(cls, grid: tuple[int, int], size: tuple[int, int]) -> float:
        """Keys per output pixel its kernels keep: the mean window height times the
        widest window width (:meth:`.window.Windows.entries`)."""
        (lo_r, hi_r), (lo_c, hi_c) = (window_bounds(n, g, WINDOW_RATIO) for n, g in zip(size, grid))
        return float((hi_r - lo_r).double().mean()) * int((hi_c - lo_c).max())

    def kernel_entries(self, size: tuple[int, int], grid: tuple[int, int]) -> int:
        return Windows.build(size, grid, self.window_ratio, "cpu").entries()

    def make_kernels(self, prep: Prepared, store: torch.dtype) -> Kernels:
        k = WindowKernels(prep.geometry, store)
        self.rows_of(prep, slice(0, prep.size[0]), record=k.record, weights_only=True)
        return k

    def extra_metadata(self) -> dict:
        return {
            **super().extra_metadata(),
            "licence": LICENCE,
            "window_ratio": self.window_ratio,
            "guidance": "ImageNet-normalised image",
        }


@register_upsampler(
    "anyup-multi",
    description="AnyUp trained on several backbones (DINOv2 S, S-reg, CLIP B, SigLIP B, ViT-B)",
    options=AnyUpOptions,
    takes_weights=True,
    licence=LICENCE,
    citation=CITATION,
)
class AnyUpMulti(AnyUp):
    """AnyUp with the multi-backbone release weights (same architecture and format)."""

    release_name = "anyup-multi"
