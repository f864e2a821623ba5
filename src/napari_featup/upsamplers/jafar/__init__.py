"""JAFAR (Couairon et al., NeurIPS 2025): a learned attention upsampler with one
checkpoint per backbone, re-implemented in plain PyTorch from the paper and the
behaviour of the public code (https://github.com/PaulCouairon/JAFAR, Apache-2.0); its
release files (training save dicts) load as they are, without unpickling their config.

Every output pixel is a convex combination of all low-res feature vectors, weighted by
the head-averaged attention between a full-resolution image query and keys made from
the image and the features (SFT modulation). Evaluated exactly in row bands (see
:mod:`.._attention.upsampler`). JAFAR normalises the guidance image with the backbone's own
mean / std; the pipeline passes the ImageNet-normalised image, so it is re-normalised
here when they differ (``mean`` / ``std`` options, else the checkpoint's, else the
backbone's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import UpsamplerError, WeightsFileError
from .._attention.encoded import guidance_affine
from .._attention.encoder import IMAGENET_MEAN, IMAGENET_STD
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
from .model import GROUPS, HEADS, QK_DIM, DenseKernels, add_modules, global_attend, key_head
from .releases import (
    RELEASES,
    Release,
    backbone_facts,
    describe_releases,
    release_by_key,
    release_for,
    timm_mean_std,
)

LICENCE = "Apache-2.0"
#: attention scores per tile of rows (queries x keys): bounds a tile's time (Cancel is
#: answered between tiles) and memory; JAFAR attends to every key
SCORES_PER_TILE = 1 << 25
CITATION = (
    "Couairon, Chambon, Serrano, Haugeard, Cord, Thome: JAFAR: Jack up Any Feature at Any "
    "Resolution, NeurIPS 2025 (arXiv:2506.11136)"
)
Triple = tuple[float, float, float]


def _triple(name: str, value: Any) -> Triple | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace("/", " ").split() if v]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be three numbers (e.g. 0.5/0.5/0.5), got {value!r}") from exc
    if len(out) != 3 or (name == "std" and min(out) <= 0):
        raise ValueError(f"{name} must be three numbers (std > 0), got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class JAFAROptions:
    """``memory_mb``: working memory for encoding the image (see anyup's).
    ``checkpoint``: a release name (see ``describe_releases()``) instead of the one
    matching the backbone. ``mean`` / ``std``: the guidance normalisation the weights
    expect, three numbers as ``0.5/0.5/0.5`` (default: the checkpoint's backbone's)."""

    memory_mb: int = 1024
    checkpoint: str | None = None
    mean: Triple | str | None = None
    std: Triple | str | None = None

    def __post_init__(self):
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be at least 64, got {self.memory_mb}")
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")


def jafar_release(backbone: Any = None, checkpoint: str | None = None) -> Release:
    """The published checkpoint for ``backbone`` (or named ``checkpoint``)."""
    if checkpoint:
        try:
            return release_by_key(checkpoint)
        except KeyError:
            raise UpsamplerError(
                f"jafar has no published checkpoint {checkpoint!r}; choose one of: "
                f"{describe_releases()}"
            ) from None
    facts = backbone_facts(backbone)
    rel = release_for(facts["timm"])
    if rel is None:
        which = (
            f"backbone {facts['name']!r} (timm {facts['timm']})" if facts["name"] else "no backbone"
        )
        raise UpsamplerError(
            f"jafar: there is no published JAFAR checkpoint for {which}. Published: "
            f"{describe_releases()}. Use 'anyup' (any backbone), pass weights=PATH (a JAFAR "
            "checkpoint trained on this backbone), or checkpoint=NAME to use one anyway."
        )
    return rel


def jafar_weights_file(release: Release, progress: bool = True) -> Path:
    """The release file of ``release`` in the cache, downloaded once."""
    return release_file(release.url, "jafar", progress=progress)


def download_weights(backbones: list[str], progress: bool = True) -> list[tuple[str, Path]]:
    """Fetch the published JAFAR checkpoints of ``backbones`` (those that have one)."""
    out = []
    for name in backbones:
        rel = release_for(backbone_facts(name)["timm"])
        if rel is not None:
            out.append((f"jafar {name} ({rel.key})", jafar_weights_file(rel, progress)))
    return out


@register_upsampler(
    "jafar",
    description=(
        "JAFAR: learned global attention, one checkpoint per backbone (DINOv2 S/B/S-reg4, "
        "DINO-B, ViT-B, CLIP-B, SigLIP2-B)"
    ),
    options=JAFAROptions,
    takes_weights=True,
    licence=LICENCE,
    citation=CITATION,
)
class JAFAR(AttentionUpsampler):
    """JAFAR for ``channels``-d features (see the module docstring)."""

    groups = GROUPS

    def __init__(
        self,
        channels: int,
        memory_mb: int = JAFAROptions.memory_mb,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ):
        super().__init__(memory_mb)
        self.channels = int(channels)
        self.mean, self.std = tuple(mean), tuple(std)
        add_modules(self, self.channels, QK_DIM, HEADS)

    @classmethod
    def published_weights(
        cls, backbone: str, use_norm: bool | None = None, options: Any = None
    ) -> tuple[Path, str] | None:
        """The release file for ``backbone`` (or ``options.checkpoint``): (cache path,
        URL); None where none is published (loading then says so)."""
        try:
            release = jafar_release(backbone, getattr(options, "checkpoint", None))
        except UpsamplerError:
            return None
        return release_path(release.url, "jafar"), release.url

    @classmethod
    def build(
        cls,
        options: JAFAROptions,
        *,
        backbone: Any = None,
        use_norm: bool = False,
        weights: Any = None,
        device: torch.device | None = None,
    ) -> JAFAR:
        facts = backbone_facts(backbone)
        release, state, source = None, None, RANDOM_LABEL
        if weights is None:
            release = jafar_release(backbone, options.checkpoint)
            path = jafar_weights_file(release)
        elif isinstance(weights, str) and weights.lower() == "random":
            path = None
        elif isinstance(weights, (str, Path)):
            path = Path(weights)
        else:
            raise UpsamplerError(f"jafar: weights must be a path or 'random', got {weights!r}")
        if path is not None:
            state = read_state(path, wrappers=("jafar", "state_dict", "model"))
            source = str(path)
            w = state.get("key_features_encoder.0.weight")
            if not isinstance(w, torch.Tensor) or w.ndim != 4:
                raise WeightsFileError(
                    f"{source} is not a JAFAR checkpoint (no key_features_encoder.0.weight)"
                )
            channels = int(w.shape[1])
        elif facts["dim"]:
            channels = int(facts["dim"])
        else:
            raise UpsamplerError(
                "jafar with weights='random' needs backbone= (its channel count sizes the "
                "feature encoder)"
            )
        if facts["dim"] and int(facts["dim"]) != channels:
            raise UpsamplerError(
                f"jafar: the checkpoint {source} takes {channels}-channel features but backbone "
                f"{facts['name']!r} gives {facts['dim']}; use the checkpoint trained on this "
                "backbone (or 'anyup', which takes any channel count)"
            )
        mean, std = cls._guidance(options, release, facts)
        with seeded(0):
            up = cls(channels, options.memory_mb, mean, std)
        up.use_norm = bool(use_norm)
        if state is not None:
            up.load_checkpoint(state, source)
        up.weights_source, up.release = source, release.key if release else None
        return up

    @staticmethod
    def _guidance(options: JAFAROptions, release: Release | None, facts: dict):
        """The guidance mean / std: options, the release's backbone, the backbone's
        own (its spec, else timm's pretrained config), else ImageNet."""
        if options.mean is not None:
            return options.mean, options.std
        if release is not None:
            return release.mean, release.std
        if facts["mean"] is not None and facts["std"] is not None:
            return tuple(facts["mean"]), tuple(facts["std"])
        return timm_mean_std(facts["timm"]) or (IMAGENET_MEAN, IMAGENET_STD)

    # ------------------------------------------------------------ model pieces
    def check_features(self, lowres: torch.Tensor) -> None:
        if lowres.shape[1] != self.channels:
            raise UpsamplerError(
                f"jafar: these weights take {self.channels}-channel features, got "
                f"{lowres.shape[1]}; load the checkpoint of the backbone that made them "
                f"(published: {', '.join(f'{r.key} {r.dim}-d' for r in RELEASES)}) or use anyup"
            )

    def encoder_extras(self, like: torch.Tensor) -> dict:
        return {"query_norm": True, "guidance": guidance_affine(self.mean, self.std, like)}

    def key_head(self, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return key_head(self, pooled, feats)

    def tile_rows(self, prep: Prepared) -> int:
        keys = prep.keys.shape[0]
        pixels = min(self.tile_pixels, max(prep.size[1], SCORES_PER_TILE // keys))
        return max(1, pixels // prep.size[1])

    def attend(self, prep: Prepared, q, rows: slice, out: torch.Tensor | None, record=None):
        shape = (rows.stop - rows.start, prep.size[1])
        global_attend(q, prep.keys, prep.values, out, shape, record, r0=rows.start)

    def kernel_entries(self, size: tuple[int, int], grid: tuple[int, int]) -> int:
        return size[0] * size[1] * grid[0] * grid[1]

    def make_kernels(self, prep: Prepared, store: torch.dtype) -> Kernels:
        k = DenseKernels(prep.size, store)
        self.rows_of(prep, slice(0, prep.size[0]), record=k.record, weights_only=True)
        return k

    def extra_metadata(self) -> dict:
        return {
            **super().extra_metadata(),
            "licence": LICENCE,
            "channels": self.channels,
            "guidance_mean": list(self.mean),
            "guidance_std": list(self.std),
        }
