"""The upsampler protocol, and the pieces every upsampler shares.

An upsampler lifts a low-res feature grid (B, C, h, w) to pixel resolution, guided by
the ImageNet-normalised image (B, 3, H, W) the grid was computed from (padded to a
whole number of patches, so ``H = h * stride``).

* ``up(lowres, image)`` is the upsampler's own output, at its native size
  (:meth:`Upsampler.native_size`; FeatUp's JBU stack gives 16x the grid).
* ``up.upsample(lowres, image, rows=...)`` gives the output on the image's pixel grid
  (H, W), optionally only some rows, so callers can tile large outputs.
* Upsamplers that are *channel-linear* (every output pixel is image-dependent weights
  applied to the same low-res values for every channel, plus at most a per-pixel
  channel affine map) set ``linear = True`` and return :class:`Kernels` from
  :meth:`Upsampler.kernels`: computed once per image, applied to any channel set.
  A PCA projection or a similarity query then costs a K-channel upsample instead of a
  C-channel one (docs/library.md, "Interaction without recomputing").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import UpsamplerError
from ..ops import channel_norm, linear_taps, resize_bilinear  # noqa: F401 (re-exported)
from ..progress import Progress


class Kernels:
    """Image-dependent upsampling weights, reusable for any channels.

    Subclasses implement :meth:`apply_linear` (the channel-shared linear part, for any
    number of channels) and may set ``affine = (A (C, C), b (C,))`` for a per-pixel
    channel map applied after it (FeatUp's final ``x + 0.1 * conv1x1(x)``).
    ``out_size`` is the (H, W) pixel grid of the output.
    """

    out_size: tuple[int, int]
    affine: tuple[torch.Tensor, torch.Tensor] | None = None

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Upsample (B, K, h, w) values to (B, K, R, W) with the shared weights."""
        raise NotImplementedError

    def __call__(self, lowres: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """The upsampled features themselves: (B, C, h, w) -> (B, C, R, W)."""
        out = self.apply_linear(lowres, rows)
        if self.affine is not None:
            a, b = self.affine
            out = (
                torch.einsum("kc,bchw->bkhw", a.to(out.dtype), out) + b.to(out.dtype)[:, None, None]
            )
        return out

    def project(
        self,
        lowres: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        rows: slice | None = None,
    ) -> torch.Tensor:
        """``weight @ upsampled + bias`` per pixel, computed as a K-channel upsample.

        ``lowres`` (B, C, h, w), ``weight`` (K, C), ``bias`` (K,) -> (B, K, R, W).
        """
        weight = weight.to(lowres)
        if self.affine is not None:
            a, b = (t.to(lowres) for t in self.affine)
            extra = weight @ b
            weight = weight @ a
            bias = extra if bias is None else bias.to(lowres) + extra
        values = torch.einsum("kc,bchw->bkhw", weight, lowres)
        out = self.apply_linear(values, rows)
        if bias is not None:
            out = out + bias.to(out)[:, None, None]
        return out


class Upsampler(nn.Module):
    """Base class of upsamplers: ``up(lowres, image)`` lifts (B, C, h, w) features to the
    (B, 3, H, W) guidance image's pixels, giving (B, C, H, W).

    Subclasses are registered with
    :func:`~napari_featup.upsamplers.register_upsampler` (name, description, options),
    implement ``forward`` and declare what they can do in the class attributes below.

    Attributes
    ----------
    use_norm : bool
        The caller applies :func:`~napari_featup.ops.channel_norm` to the backbone
        features first (FeatUp's JBU stacks were trained with and without it).
    linear : bool
        Channel-linear, with reusable :meth:`kernels` (clicks reuse them).
    tileable : bool
        :meth:`upsample` evaluates a band of rows exactly (with its own halo).
    fits_per_image : bool
        :meth:`iter_fit` does real work per image before upsampling.
    factored : bool
        :meth:`factors` gives fewer per-pixel factors than channels.
    """

    #: set by :func:`~napari_featup.upsamplers.register_upsampler`
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: capabilities, read by the pipeline and :class:`~napari_featup.field.FeatureField`:
    #: ``linear`` -- channel-linear, with reusable :meth:`kernels`;
    #: ``tileable`` -- :meth:`upsample` evaluates a band of rows exactly (own halo);
    #: ``fits_per_image`` -- :meth:`iter_fit` does real work before upsampling;
    #: ``factored`` -- :meth:`factors` gives fewer per-pixel factors than channels;
    #: ``cheap_projection`` -- a 1-channel projection through the kernels costs no more
    #: than a compact-field query (bilinear: one resize), so text queries take it exactly.
    #: ``content_linear`` -- the output is weights computed once from the image *and*
    #: the features (all C channels) applied to the low-res values (attention
    #: upsamplers): :meth:`content_kernels` returns them as :class:`Kernels`.
    linear: ClassVar[bool] = False
    tileable: ClassVar[bool] = False
    fits_per_image: ClassVar[bool] = False
    factored: ClassVar[bool] = False
    cheap_projection: ClassVar[bool] = False
    content_linear: ClassVar[bool] = False
    use_norm: bool = False

    @classmethod
    def build(
        cls,
        options: Any,
        *,
        backbone: Any = None,
        use_norm: bool = False,
        weights: Any = None,
        device: torch.device | None = None,
    ) -> Upsampler:
        """Make the upsampler from its registry options (a dataclass instance).

        The default suits upsamplers without weights whose constructor takes the
        options as keyword arguments; others override it. ``use_norm`` is already
        resolved (the registry's default when the caller gave none).
        """
        if weights is not None:
            raise UpsamplerError(f"the {cls.name} upsampler has no weights; do not pass weights=")
        up = cls(**dataclasses.asdict(options))
        up.use_norm = bool(use_norm)
        return up

    @classmethod
    def published_weights(
        cls, backbone: str, use_norm: bool | None = None, options: Any = None
    ) -> tuple[Path, str] | None:
        """(cache path, URL) of the published weights :meth:`build` fetches when given
        no ``weights``, for the pre-run check that they are cached or reachable; None
        when there are none (or the library's own error says why at load time)."""
        return None

    @classmethod
    def cost(
        cls, channels: int, grid: tuple[int, int], size: tuple[int, int], options: Any = None
    ) -> tuple[float, int, int | None] | None:
        """For run estimates, where a per-channel cost per pixel does not describe the
        upsampler: (GFLOP, working bytes, bytes of kept kernels or None when the output
        is kept dense instead) of evaluating a (channels, *grid) map at ``size``. None:
        the estimate's per-channel figures apply."""
        return None

    def native_size(self, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        """(H', W') of ``forward``'s output for a grid and an image size."""
        return tuple(image_size)

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Native output; linear upsamplers whose native grid is the image's get it
        from their kernels, others override this."""
        if not self.linear:
            raise NotImplementedError(f"upsampler {self.name!r} must implement forward")
        return self.kernels(image, tuple(lowres.shape[-2:]))(lowres)

    def iter_fit(self, lowres: torch.Tensor, image: torch.Tensor) -> Iterator[Progress]:
        """Fit per-image state before upsampling, yielding :class:`Progress` events.

        Upsamplers that fit to each image (``fits_per_image``: FeatUp's implicit model,
        fitted guided kernels) override this; the pipeline relays the events into its
        own range, and a consumer that stops iterating cancels the fit. The default
        fits nothing.
        """
        return iter(())

    def kernels(self, image: torch.Tensor, grid: tuple[int, int]) -> Kernels:
        """Weights for upsampling a ``grid`` to ``image``'s pixel grid (linear only)."""
        raise NotImplementedError(f"upsampler {self.name!r} is not channel-linear")

    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """Features on ``image``'s pixel grid: (B, C, h, w) -> (B, C, R, W).

        The default evaluates the whole output; subclasses that can evaluate a band of
        rows exactly (with a halo) override it so large outputs can be tiled.
        """
        if self.linear:
            return self.kernels(image, tuple(lowres.shape[-2:]))(lowres, rows)
        out = self(lowres, image)
        return resize_bilinear(out, tuple(image.shape[-2:]), rows)

    def content_kernels(
        self, lowres: torch.Tensor, image: torch.Tensor, max_bytes: int = 1 << 30
    ) -> Kernels | None:
        """For ``content_linear`` upsamplers: the weights of this (features, image) pair
        as :class:`Kernels`, so a K-channel projection of the output is the same weights
        applied to the K-channel projection of ``lowres`` (B = 1). None (the default)
        when there are none or they would take more than ``max_bytes``."""
        return None

    def factors(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For a non-linear upsampler whose output is an affine map of fewer per-pixel
        factors (FeatUp's implicit model predicts 128 PCA coordinates): ``(Z, A, m)``
        with Z (1, P, R, W) on ``image``'s pixel grid (only ``rows``), A (C, P) and
        m (C,), so the output is ``A Z + m``. Interaction then keeps P instead of C
        channels per pixel. None (the default) when there are no such factors."""
        return None

    def extra_metadata(self) -> dict:
        """Facts about this upsampler worth recording with its outputs."""
        return {}
