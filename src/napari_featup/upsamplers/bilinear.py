"""Bilinear upsampling: the baseline, image-blind and channel-linear."""

from __future__ import annotations

import torch

from ._registry import register_upsampler
from .base import Kernels, Upsampler, resize_bilinear


class BilinearKernels(Kernels):
    """Bilinear weights to an output size: the same map for every channel."""

    def __init__(self, out_size: tuple[int, int]):
        self.out_size = out_size

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        return resize_bilinear(values, self.out_size, rows)


@register_upsampler("bilinear", description="bilinear interpolation (no guidance, no weights)")
class Bilinear(Upsampler):
    """Bilinear interpolation of the grid to the image (pixel centres aligned)."""

    linear = True
    tileable = True
    cheap_projection = True

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return resize_bilinear(lowres, tuple(image.shape[-2:]))

    def kernels(self, image: torch.Tensor, grid: tuple[int, int]) -> Kernels:
        return BilinearKernels(tuple(image.shape[-2:]))
