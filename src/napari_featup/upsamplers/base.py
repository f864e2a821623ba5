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
  C-channel one (DESIGN.md, "Make interaction cheap").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


def channel_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """FeatUp's ``use_norm``: LayerNorm over channels at each pixel, no affine."""
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=eps).permute(0, 3, 1, 2)


def _linear_taps(
    n_in: int, n_out: int, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices i0, i1 and weight of i1 for linear resizing n_in -> n_out.

    Matches ``F.interpolate(mode="bilinear", align_corners=False)`` (pixel centres
    map to pixel centres; positions before the first centre clamp to it).
    """
    pos = (torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = pos.clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    frac = (pos - i0).clamp(0, 1)
    return i0, i1, frac


def resize_bilinear(
    x: torch.Tensor, size: tuple[int, int], rows: slice | None = None
) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to ``size``, computing only output ``rows``.

    Equal to ``F.interpolate(x, size, mode="bilinear", align_corners=False)[..., rows, :]``
    but touching only the source rows the requested ones need, so memory is that of
    the output tile.
    """
    (h, w), (H, W) = x.shape[-2:], size
    if rows is None:
        rows = slice(0, H)
    r0, r1, _ = rows.indices(H)
    if (h, w) == (H, W):
        return x[..., r0:r1, :]
    i0, i1, fy = _linear_taps(h, H, x.device)
    i0, i1, fy = i0[r0:r1], i1[r0:r1], fy[r0:r1].to(x.dtype)[:, None]
    xr = x[..., i0, :] * (1 - fy) + x[..., i1, :] * fy  # (B, C, R, w)
    # Along columns, F.interpolate with an unchanged height is the same linear map
    # (rows map to themselves) and ~50x faster than gathering columns on CPU.
    return F.interpolate(xr, size=(xr.shape[-2], W), mode="bilinear", align_corners=False)


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
    """Base class: subclasses set ``name`` and implement ``forward``.

    ``use_norm`` (default False) asks the caller to apply :func:`channel_norm` to the
    backbone features before upsampling (FeatUp's JBU stacks were trained with and
    without it). Linear upsamplers set ``linear = True`` and implement ``kernels``.
    """

    name: ClassVar[str] = ""
    linear: ClassVar[bool] = False
    description: ClassVar[str] = ""
    use_norm: bool = False

    def native_size(self, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[int, int]:
        """(H', W') of ``forward``'s output for a grid and an image size."""
        return tuple(image_size)

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Native output; linear upsamplers whose native grid is the image's get it
        from their kernels, others override this."""
        if not self.linear:
            raise NotImplementedError(f"upsampler {self.name!r} must implement forward")
        return self.kernels(image, tuple(lowres.shape[-2:]))(lowres)

    def iter_fit(self, lowres: torch.Tensor, image: torch.Tensor) -> Iterator[tuple[int, int, str]]:
        """Fit per-image state before upsampling, yielding ``(done, total, message)``.

        Upsamplers that fit to each image (FeatUp's implicit model, fitted guided
        kernels) override this; the pipeline turns the events into progress and a
        consumer that stops iterating cancels the fit. The default fits nothing.
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
