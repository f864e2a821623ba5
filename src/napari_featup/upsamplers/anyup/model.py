"""AnyUp's parameters (named as in the published state dicts) and its low-res key head.

The modules here only hold weights; the computation is
:mod:`~napari_featup.upsamplers._attention.encoder` (full-resolution encoders, chunked),
:func:`key_head` below (low resolution) and :mod:`.window` (the attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._attention.modules import RoPE, resblock_lowres

#: AnyUp's published configuration (``AnyUp()``'s defaults)
QK_DIM = 128
HEADS = 4
LFU_KERNEL = 5
WINDOW_RATIO = 0.1
GROUPS = 8


class ResBlock(nn.Module):
    """``x + block(x)``, block = GN, SiLU, 1x1 conv, GN, SiLU, 1x1 conv (indices 0-5)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(GROUPS, dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 1, bias=False),
            nn.GroupNorm(GROUPS, dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 1, bias=False),
        )

    def parts(self) -> tuple:
        b = self.block
        return b[0], b[2], b[3], b[5]


class FeatureUnification(nn.Module):
    """The learned feature unification: ``basis`` (D, 1, k, k) filters applied to every
    feature channel, turning any channel count into D channels."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.basis = nn.Parameter(torch.randn(dim, 1, kernel, kernel))


def encoder(first: nn.Module, dim: int) -> nn.Sequential:
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        # only its head-averaged attention weights are used (not its value path)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)


class CrossDecode(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)


def add_modules(m: nn.Module, dim: int = QK_DIM, heads: int = HEADS) -> None:
    """Give ``m`` AnyUp's submodules, so ``m.state_dict()`` keys equal the release files'."""
    m.image_encoder = encoder(nn.Conv2d(3, dim, 1, bias=False), dim)
    m.key_encoder = encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
    m.query_encoder = encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
    m.key_features_encoder = encoder(FeatureUnification(dim, LFU_KERNEL), dim)
    m.cross_decode = CrossDecode(dim, heads)
    m.aggregation = encoder(nn.Conv2d(2 * dim, dim, 3, bias=False), dim)
    m.rope = RoPE(dim)


def feature_unification(feats: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(C, h, w) L2-normalised features -> (D, h, w).

    Each channel is filtered with the D basis filters (zero padding, divided by the
    number of in-image taps). The trained weights read the C*D responses in a specific
    memory order: laid out channel-major (index i*D + j for channel i, filter j), the
    buffer is read as a (D, C) matrix, so "filter" a sees responses a*C .. a*C + C-1,
    which mixes channels and filters. Softmax over a, mean over the C columns.
    """
    c, h, w = feats.shape
    d, _, k, _ = basis.shape
    p = k // 2
    x = feats.float()
    bf = basis.detach().float().reshape(d, k * k)
    ones = x.new_ones(1, 1, h, w)
    count = F.conv2d(F.pad(ones, (p, p, p, p)), x.new_ones(1, 1, k, k))[0, 0]
    # |feature| <= 1 (unit norm over channels) bounds every response by the filter's L1
    # norm over the fewest taps; below 60 exp cannot overflow float32 without shifting
    shift = bool(bf.abs().sum(1).max() / count.min() >= 60)
    out = x.new_empty(h * w, d)
    padded = F.pad(x[:, None], (p, p, p, p))  # (C, 1, h+2p, w+2p)
    # C*D responses per cell (196 kB at C=384): a few cells at a time stay in cache
    band = max(1, (16 << 20) // max(1, c * k * k * w * 4))
    cells = max(1, (2 << 20) // (c * d * 4))
    inv_count = count.reciprocal().flatten()
    bt = bf.t().contiguous()  # (k*k, D)
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        patches = F.unfold(padded[:, :, r0 : r1 + 2 * p], k).permute(2, 0, 1)  # (R*w, C, k*k)
        for q0 in range(0, patches.shape[0], cells):
            q1 = min(patches.shape[0], q0 + cells)
            o0 = r0 * w + q0
            # per cell, channel-major responses (channel i, filter j at i*D + j) ...
            resp = torch.matmul(patches[q0:q1], bt)  # (n, C, D)
            resp *= inv_count[o0 : o0 + q1 - q0, None, None]
            # ... read as (D, C): a reshape, not a transpose (what the weights expect)
            resp = resp.view(q1 - q0, d, c)
            if shift:
                resp -= resp.amax(1, keepdim=True)
            resp.exp_()
            # softmax over a, then the mean over the C columns, as one weighted sum
            inv = resp.sum(1).mul_(c).reciprocal_()  # (n, C)
            out[o0 : o0 + q1 - q0] = (resp * inv[:, None, :]).sum(2)
    return out.t().reshape(d, h, w).to(feats.dtype)


def key_head(m: nn.Module, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """AnyUp's keys before their RMSNorm: (h*w, D).

    ``pooled`` (h, w, D) the image key encoder's output pooled to the grid; ``feats``
    (C, h, w) the raw features. Keys = aggregation(cat[pooled, unified features]).
    """
    x = pooled.permute(2, 0, 1)
    kfe = m.key_features_encoder
    f = feature_unification(F.normalize(feats, dim=0), kfe[0].basis.detach())
    for blk in kfe[1:]:
        f = resblock_lowres(blk, f, GROUPS)
    agg = m.aggregation
    y = F.pad(torch.cat([x, f], dim=0)[None], (1, 1, 1, 1), mode="reflect")
    y = F.conv2d(y, agg[0].weight.to(y))[0]
    for blk in agg[1:]:
        y = resblock_lowres(blk, y, GROUPS)
    return y.reshape(y.shape[0], -1).t()
