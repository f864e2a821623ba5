"""Tensor helpers shared by the upsamplers and the fitters: mirror indexing, FeatUp's
5-tap Gaussian blur, exact row-banded bilinear resizing and FeatUp's channel norm.

Shapes are (B, C, H, W) unless said otherwise; nothing here holds state.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def reflect_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map integer positions onto ``[0, n)`` by mirror reflection (edge not repeated).

    Equals ``F.pad(mode="reflect")`` where that works and keeps reflecting where the
    pad is wider than the axis (numpy's ``reflect``), so 1- or 2-wide grids work.
    """
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    i = torch.remainder(idx, period)
    return torch.where(i >= n, period - i, i)


def gaussian_taps5(dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The 5 weights of FeatUp's Gaussian blur (sigma 1, kernel 5), summing to 1."""
    t = torch.arange(5, dtype=torch.float64, device=device) - 2
    k = torch.exp(-(t**2) / 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur5(x: torch.Tensor) -> torch.Tensor:
    """5-tap Gaussian (sigma 1) blur of (B, C, H, W), reflect border, per channel."""
    k = gaussian_taps5(x.dtype, x.device)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
    x = F.pad(x, (2, 2, 2, 2), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)


@functools.lru_cache(maxsize=16)
def blur_matrix5(n: int) -> torch.Tensor:
    """(n, n) float64 matrix of :func:`gaussian_blur5` along one axis (reflect border)."""
    k = gaussian_taps5()
    m = torch.zeros(n, n, dtype=torch.float64)
    r = torch.arange(n)
    for o in range(5):
        m.index_put_((r, reflect_index(r + o - 2, n)), k[o].expand(n), accumulate=True)
    return m


def channel_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """FeatUp's ``use_norm``: LayerNorm over channels at each pixel, no affine.

    Parameters
    ----------
    x : torch.Tensor
        (B, C, H, W) features.
    eps : float
        Added to the variance.

    Returns
    -------
    torch.Tensor
        (B, C, H, W), zero mean and unit variance over C at each pixel.
    """
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=eps).permute(0, 3, 1, 2)


def linear_taps(
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

    Parameters
    ----------
    x : torch.Tensor
        (B, C, h, w).
    size : tuple of int
        (H, W) of the whole output.
    rows : slice, optional
        The output rows wanted (None: all).

    Returns
    -------
    torch.Tensor
        (B, C, len(rows), W).
    """
    (h, w), (H, W) = x.shape[-2:], size
    if rows is None:
        rows = slice(0, H)
    r0, r1, _ = rows.indices(H)
    if (h, w) == (H, W):
        return x[..., r0:r1, :]
    i0, i1, fy = linear_taps(h, H, x.device)
    i0, i1, fy = i0[r0:r1], i1[r0:r1], fy[r0:r1].to(x.dtype)[:, None]
    xr = x[..., i0, :] * (1 - fy) + x[..., i1, :] * fy  # (B, C, R, w)
    # Along columns, F.interpolate with an unchanged height is the same linear map
    # (rows map to themselves) and ~50x faster than gathering columns on CPU.
    return F.interpolate(xr, size=(xr.shape[-2], W), mode="bilinear", align_corners=False)
