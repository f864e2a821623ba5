"""FeatUp's JBU stack evaluated the straightforward way, in plain torch ops.

FeatUp's own steps: range kernel by ``unfold`` (32 x 49 x H x W), the C-channel bicubic
upsample built and reflect-padded, then 49 shifted slices multiplied and summed. Slow
and memory hungry; it is what :class:`JBULayer.forward <.layer.JBULayer>` runs, and the
baseline the tests and ``benchmarks/bench_jbu.py`` check the fast path against.

It reads the layer's geometry (``radius``, ``key_dim``) from the layer itself, so it
needs nothing from the rest of the package (``layer.py`` builds on this module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...ops import reflect_index

if TYPE_CHECKING:
    from .layer import JBULayer
    from .stack import FeatUpJBU


def _reflect_pad(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mirror-pad the last two axes by ``r`` (numpy's ``reflect``, also on 1-2 wide grids)."""
    n, m = x.shape[-2:]
    rows = reflect_index(torch.arange(-r, n + r, device=x.device), n)
    cols = reflect_index(torch.arange(-r, m + r, device=x.device), m)
    return x.index_select(-2, rows).index_select(-1, cols)


def reference_layer(layer: JBULayer, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """One JBU layer, FeatUp's steps in torch ops.

    Parameters
    ----------
    layer
        The layer whose weights to use.
    source
        (B, C, h, w) values to upsample.
    guidance
        (B, 3, 2h, 2w) guidance image.

    Returns
    -------
    torch.Tensor
        (B, C, 2h, 2w), in ``source``'s dtype.
    """
    r = layer.radius
    d = 2 * r + 1
    taps = d * d
    b, _, gh, gw = guidance.shape
    emb = layer._conv(layer.range_proj, guidance.float())
    queries = F.unfold(_reflect_pad(emb, r), d).view(b, emb.shape[1], taps, gh, gw)
    temp = layer.range_temp.float().exp().clamp(1e-4, 1e4)
    rng = torch.softmax(temp * torch.einsum("bcphw,bchw->bphw", queries, emb), dim=1)
    k = rng * layer.spatial_kernel().view(1, taps, 1, 1)
    k = k / k.sum(1, keepdim=True).clamp(1e-7)
    k = k + 0.1 * layer._conv(layer.fixup_proj, torch.cat([k, guidance.float()], 1))
    hr = F.interpolate(source, (gh, gw), mode="bicubic", align_corners=False)
    hr = _reflect_pad(hr, r)
    out = source.new_zeros(source.shape[0], source.shape[1], gh, gw)
    for i in range(d):
        for j in range(d):
            p = i * d + j
            out += hr[:, :, i : i + gh, j : j + gw] * k[:, p : p + 1]
    return out


def reference_forward(stack: FeatUpJBU, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The whole stack the straightforward way (see :func:`reference_layer`).

    Parameters
    ----------
    stack
        The JBU stack whose weights to use.
    source
        (B, C, h, w) low-res features.
    image
        (B, 3, H, W) guidance image; each layer gets its ``adaptive_avg_pool2d``.

    Returns
    -------
    torch.Tensor
        (B, C, 16h, 16w), FeatUp's output.
    """
    x = source
    for layer in stack.layers:
        h, w = x.shape[-2:]
        x = reference_layer(layer, x, F.adaptive_avg_pool2d(image, (2 * h, 2 * w)))
    conv = stack.fixup_proj[1]
    return x + 0.1 * F.conv2d(x, conv.weight.to(x), conv.bias.to(x))
