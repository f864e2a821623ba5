"""FeatUp's JBU stack as a registered upsampler, and loading FeatUp checkpoints into it.

The module is state-dict compatible with the ``upsampler.*`` part of FeatUp's Lightning
checkpoints: ``up1``..``up4`` joint bilateral layers (:class:`JBULayer`), then
``x + 0.1 * conv1x1(x)``. It is evaluated through :class:`JBUKernels` (``kernels.py``);
``reference.py`` holds the straightforward evaluation it is checked against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import UpsamplerError, WeightsFileError, WeightsUnavailableError
from .._registry import register_upsampler
from ..base import Upsampler
from .checkpoints import (
    download_featup_checkpoint,
    featup_checkpoint_path,
    featup_checkpoint_url,
    read_featup_state,
)
from .kernels import JBUKernels
from .layer import JBULayer

#: forward() evaluates output rows in bands of about this many bytes (with halos)
_FORWARD_BAND_BYTES = 32 << 20


@dataclass(frozen=True)
class FeatUpJBUOptions:
    """Options of ``featup-jbu``.

    Attributes
    ----------
    cache_mb
        MB of folded kernel weights kept between calls on one image.
    """

    cache_mb: float = 512


@register_upsampler(
    "featup-jbu",
    description="FeatUp JBU stack (16x, pretrained per backbone), pure PyTorch",
    options=FeatUpJBUOptions,
    takes_weights=True,
    default_use_norm=True,
)
class FeatUpJBU(Upsampler):
    """FeatUp's JBU stack: four 2x JBU layers then ``x + 0.1 * conv1x1(x)``; 16x output.

    Loads FeatUp's ``upsampler.*`` weights (:func:`load_featup_checkpoint`). Channel-
    linear: :meth:`kernels` gives reusable per-image kernels.

    Parameters
    ----------
    dim
        Feature channels (the backbone's dim).
    use_norm
        Whether the features are to be channel-normed first (as the checkpoint was
        trained); recorded, applied by the caller.
    cache_mb
        Folded kernels of an image are kept when they fit in this many MB (else
        recomputed per tile).
    """

    linear = True
    tileable = True

    def __init__(
        self, dim: int, use_norm: bool = True, cache_mb: float = FeatUpJBUOptions.cache_mb
    ):
        super().__init__()
        self.dim = int(dim)
        self.use_norm = bool(use_norm)
        self.cache_mb = cache_mb
        self.up1, self.up2, self.up3, self.up4 = (JBULayer() for _ in range(4))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(self.dim, self.dim, 1))
        self.source: str = "random init"

    @classmethod
    def published_weights(
        cls, backbone: str, use_norm: bool | None = None, options: Any = None
    ) -> tuple[Path, str] | None:
        """FeatUp's published stack for ``backbone`` (None where none is published)."""
        norm = True if use_norm is None else bool(use_norm)
        try:
            return featup_checkpoint_path(backbone, norm), featup_checkpoint_url(backbone, norm)
        except WeightsUnavailableError:
            return None  # none published for that backbone: the library says so itself

    @classmethod
    def build(
        cls,
        options: FeatUpJBUOptions,
        *,
        backbone: Any = None,
        use_norm: bool = True,
        weights: Any = None,
        device: torch.device | None = None,
    ) -> FeatUpJBU:
        """Registry factory: FeatUp's published stack for ``backbone``, or ``weights``.

        Parameters
        ----------
        options
            The validated :class:`FeatUpJBUOptions`.
        backbone
            A backbone name or object: picks the published checkpoint and checks the dim.
        use_norm
            Which published checkpoint (FeatUp trained with and without the channel norm).
        weights
            None for FeatUp's published checkpoint (downloaded once, then cached), a
            checkpoint path, or ``"random"`` for a seeded untrained stack (tests, demos).
        device
            Where to put the stack.

        Raises
        ------
        UpsamplerError
            No backbone where one is needed, or a stack whose dim is not the backbone's.
        WeightsFileError, WeightsUnavailableError
            The checkpoint cannot be read, or is not published / cannot be fetched.
        """
        use_norm = bool(use_norm)
        bname = getattr(backbone, "name", backbone)
        if weights is None:
            if bname is None:
                raise UpsamplerError(
                    "featup-jbu needs backbone= (to pick FeatUp's checkpoint) or weights=PATH"
                )
            path = download_featup_checkpoint(bname, use_norm)
            try:
                up = load_featup_checkpoint(path, use_norm=use_norm)
            except WeightsFileError as exc:
                raise WeightsFileError(
                    f"{exc}\nThe cached download may be damaged: delete {path} to fetch it again."
                ) from exc
            up.source = f"FeatUp {bname} ({'norm' if use_norm else 'no_norm'}) from {path}"
        elif isinstance(weights, str) and weights == "random":
            dim = _backbone_dim(backbone)
            if dim is None:
                raise UpsamplerError(
                    "featup-jbu with weights='random' needs backbone= to know the dim"
                )
            with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
                torch.manual_seed(0)
                up = cls(dim, use_norm=use_norm)
            up.source = "random (untrained weights, for tests and demos only)"
        else:
            up = load_featup_checkpoint(weights, use_norm=use_norm)
        dim = _backbone_dim(backbone)
        if dim is not None and int(dim) != up.dim:
            raise UpsamplerError(
                f"the JBU stack is for {up.dim}-d features but backbone {bname!r} gives {dim}-d"
            )
        up.cache_mb = options.cache_mb
        if device is not None:
            up = up.to(device)
        return up.eval()

    @property
    def layers(self) -> list[JBULayer]:
        """The four 2x layers, coarse to fine."""
        return [self.up1, self.up2, self.up3, self.up4]

    def native_size(self, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        """16x the grid, whatever the image size."""
        return (16 * int(grid[0]), 16 * int(grid[1]))

    def _check(self, lowres: torch.Tensor, image: torch.Tensor) -> None:
        if lowres.dim() != 4 or image.dim() != 4 or image.shape[1] != 3:
            raise UpsamplerError(
                f"featup-jbu expects lowres (B, C, h, w) and image (B, 3, H, W); got "
                f"{tuple(lowres.shape)} and {tuple(image.shape)}"
            )
        if lowres.shape[1] != self.dim:
            raise UpsamplerError(
                f"this JBU stack was trained for {self.dim}-channel features; got "
                f"{lowres.shape[1]} channels (use the checkpoint of your backbone)"
            )
        if lowres.shape[0] != image.shape[0]:
            raise UpsamplerError(
                f"batch sizes differ: lowres {lowres.shape[0]}, image {image.shape[0]}"
            )

    def kernels(self, image: torch.Tensor, grid: tuple[int, int], cache: bool = True) -> JBUKernels:
        """Folded kernels of ``image`` for a ``grid``, reusable for any channels.

        ``cache=False`` computes them per band instead of keeping up to ``cache_mb``.
        """
        budget = int(self.cache_mb * 2**20) if cache else 0
        return JBUKernels(self, image, grid, cache_bytes=budget)

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, 3, H, W) -> (B, C, 16h, 16w), FeatUp's output."""
        self._check(lowres, image)
        kern = self.kernels(image, tuple(lowres.shape[-2:]), cache=False)
        mixed, bias = kern.mix(lowres), kern.bias(lowres)
        bsz, ch, h, w = lowres.shape
        # bands of output rows with their halos: working memory follows the band, so the
        # output (which the caller keeps) dominates, not the layer-3 map beneath it
        band = max(64, _FORWARD_BAND_BYTES // (ch * 16 * w * lowres.element_size() * bsz))
        band = 1 << (band.bit_length() - 1)
        out = lowres.new_empty(bsz, 16 * h, 16 * w, ch)  # channels last, filled band by band
        for r0 in range(0, 16 * h, band):
            r1 = min(16 * h, r0 + band)
            kern.native_rows(mixed, r0, r1, out=out[:, r0:r1]).add_(bias)
        return out.permute(0, 3, 1, 2)

    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """Features on ``image``'s pixel grid (the 16x output resized), only ``rows``."""
        self._check(lowres, image)
        return self.kernels(image, tuple(lowres.shape[-2:]), cache=False)(lowres, rows)

    def extra_metadata(self) -> dict:
        """Dim, native scale, weights source and ``use_norm``, for output metadata."""
        return {
            "dim": self.dim,
            "native_scale": 16,
            "weights": self.source,
            "use_norm": self.use_norm,
        }


def load_featup_checkpoint(
    path: str | os.PathLike, use_norm: bool = True, device: str | torch.device = "cpu"
) -> FeatUpJBU:
    """A FeatUp JBU checkpoint (Lightning ``.ckpt``) -> :class:`FeatUpJBU` in eval mode.

    Reads with ``weights_only=True`` (:func:`.checkpoints.read_featup_state`); takes
    ``state_dict['upsampler.*']`` and ignores ``downsampler.*``, ``scale_net.*``,
    ``model.*`` and optimizer state. The feature dim is read from the final 1x1 conv.

    Parameters
    ----------
    path
        The checkpoint file (or a bare JBU state dict saved with ``torch.save``).
    use_norm
        Recorded on the stack: whether it was trained on channel-normed features.
    device
        Where to put the stack.

    Returns
    -------
    FeatUpJBU
        The stack, in eval mode.

    Raises
    ------
    WeightsFileError
        Not such a checkpoint (wrong keys or shapes, truncated, other formats).
    WeightsUnavailableError
        The file does not exist.
    """
    path = str(path)
    state = read_featup_state(path)
    up = FeatUpJBU(int(state["fixup_proj.1.weight"].shape[0]), use_norm=use_norm)
    expected = up.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsFileError(
            f"{path!r} does not match FeatUp's JBU stack: missing upsampler.{missing[:5]}, "
            f"unexpected upsampler.{extra[:5]}"
        )
    wrong = [
        f"upsampler.{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise WeightsFileError(
            f"{path!r}: tensor shapes do not fit a {up.dim}-d JBU stack: " + "; ".join(wrong[:5])
        )
    up.load_state_dict({k: v.float() for k, v in state.items()})
    up.source = path
    return up.eval().to(device)


def _backbone_dim(backbone: Any) -> int | None:
    """Feature dim of a Backbone object or a registered backbone name (None if unknown)."""
    if backbone is None:
        return None
    if hasattr(backbone, "dim"):
        return int(backbone.dim)
    # imported here, not at the top: the backbone registry imports this package (for
    # FEATUP_CHECKPOINTS), so a top-level import would be circular
    from ...backbones import get_spec

    return get_spec(str(backbone)).dim
