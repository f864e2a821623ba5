"""A simple ground-truth check of the implicit upsampler against bilinear.

The "backbone" here is synthetic, so the true full-resolution features are known:
per-pixel features f(colour) = tanh(W2 relu(W1 colour)) (fixed random weights, 64-d),
average-pooled over 14 x 14 patches. The implicit model sees only the pooled grids of
jittered views, like with a real backbone; bilinear upsamples the image's grid. Both are
scored against the per-pixel truth (after FeatUp's channel norm, which the implicit fit
uses by default): mean squared error and mean cosine similarity.

    python benchmarks/check_implicit_quality.py [--size 112] [--settings fast]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from _harness import header
from torch import nn

from napari_featup.backbones import Backbone, get_spec
from napari_featup.upsamplers import channel_norm, resize_bilinear
from napari_featup.upsamplers.implicit import fit_implicit
from napari_featup.upsamplers.implicit.fit import as_image_tensor


class PixelFeatures(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(64, 3, generator=g) * 2, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(dim, 64, generator=g) / 8, requires_grad=False)

    def forward(self, x):  # (B, 3, H, W) -> (B, dim, H, W)
        h = F.relu(torch.einsum("kc,bchw->bkhw", self.w1, x))
        return torch.tanh(torch.einsum("dk,bkhw->bdhw", self.w2, h))


class PooledBackbone(Backbone):
    """Patch-averaged per-pixel features: a backbone whose truth is known."""

    def __init__(self, stride: int = 14, dim: int = 64):
        super().__init__(get_spec("dinov2"), PixelFeatures(dim), weights="synthetic")
        self.dim = dim
        self.name = "synthetic-pooled"

    def forward(self, x):
        from napari_featup.backbones import pad_to_stride

        x = pad_to_stride(x, self.patch_size)
        return F.avg_pool2d(self.model(x), self.patch_size)


def scene(size: int):
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3))
    img[..., 0] = np.sin(7 * xx + 3 * yy) > 0.3
    img[..., 1] = (yy - 0.55) ** 2 + (xx - 0.45) ** 2 < 0.07
    img[..., 2] = xx + 0.3 * np.sin(11 * yy) > 0.6
    return (img * 255).astype("uint8")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--settings", default="fast")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", default=None, help="JSON dict of ImplicitConfig overrides")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header("check_implicit_quality", weights="synthetic pooled backbone (no weights)"))
    bb = PooledBackbone().eval()
    x = as_image_tensor(scene(args.size))
    with torch.no_grad():
        truth = channel_norm(bb.model(x))
        low = channel_norm(bb(x))
    t = time.perf_counter()
    extra = json.loads(args.set) if args.set else {}
    feats = fit_implicit(x, bb, settings=args.settings, steps=args.steps, seed=0, **extra)
    fit_s = time.perf_counter() - t
    hr = feats.render(tuple(x.shape[-2:]), image=x)
    bil = resize_bilinear(low, tuple(x.shape[-2:]))
    print(
        f"synthetic pooled backbone (stride 14, 64-d), scene {args.size}px, "
        f"implicit settings {args.settings!r} {extra or ''} ({feats.info['steps_done']} steps, "
        f"{fit_s:.0f} s)"
    )
    for name, y in [("bilinear", bil), ("implicit", hr)]:
        mse = (y - truth).square().mean().item()
        cos = F.cosine_similarity(y, truth, dim=1).mean().item()
        print(f"  {name:>9}: MSE {mse:.4f}  mean cosine {cos:.4f}")


if __name__ == "__main__":
    main()
