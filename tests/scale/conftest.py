"""Shared helpers for the large-image tests: a local mock backbone (no global context,
so tiling must reproduce an untiled run exactly) and small images."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_featup.backbones import Backbone, BackboneSpec
from napari_featup.backbones._registry import BackboneFamily


class _PatchModel(nn.Module):
    """Per-patch features: a fixed random linear map of each patch's pixels, then a
    non-linearity. Each cell depends on its own patch only."""

    def __init__(self, p: int, dim: int, delay: float = 0.0, layers: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.p = p
        self.proj = nn.Linear(3 * p * p, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, 3 * p * p, generator=g) / p)
            self.proj.bias.copy_(torch.randn(dim, generator=g) * 0.1)
        self.steps = nn.ModuleList(_Sleep(delay) for _ in range(layers))

    def forward_features(self, x):
        b, _, h, w = x.shape
        p = self.p
        patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, cells, 3 p p)
        out = torch.tanh(self.proj(patches))
        for step in self.steps:
            out = step(out)
        return out.transpose(1, 2).reshape(b, -1, h // p, w // p)


class _Sleep(nn.Module):
    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return x


class _PatchFamily(BackboneFamily):
    """Runs :class:`_PatchModel` (not registered: tests build the Backbone directly)."""

    @classmethod
    def features(cls, spec, model, x):
        return model.forward_features(x)


def patch_backbone(p: int = 8, dim: int = 16, delay: float = 0.0, layers: int = 1):
    """A :class:`Backbone` whose cells see only their own patch."""
    spec = BackboneSpec("mock", "mock", dim, p, "per-patch mock", family=_PatchFamily)
    return Backbone(spec, _PatchModel(p, dim, delay, layers), weights="random").eval()


@pytest.fixture
def grey16(rng):
    """A 200 x 232 uint16 grey image with structure."""
    y, x = np.mgrid[:200, :232]
    img = 2000 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 200, (200, 232))
    return np.clip(img, 0, 65535).astype(np.uint16)
