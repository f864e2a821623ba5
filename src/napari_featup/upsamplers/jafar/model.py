"""JAFAR's parameters (named as in its checkpoints' ``"jafar"`` state dict), its
low-res key head and its global attention.

The modules only hold weights; the full-resolution encoders run in
:mod:`~napari_featup.upsamplers._attention.encoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._attention.modules import RoPE, resblock_lowres
from .._attention.upsampler import SCORE_BYTES, heads_softmax_mean
from ..base import Kernels

#: JAFAR's published configuration (``config/model/jafar.yaml``)
QK_DIM = 128
HEADS = 4
GROUPS = 8


class ResBlock(nn.Module):
    """``x + conv2(silu(norm2(conv1(silu(norm1(x))))))`` with 1x1 convs."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, dim)
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, dim)
        self.conv2 = nn.Conv2d(dim, dim, 1, bias=False)

    def parts(self) -> tuple:
        return self.norm1, self.conv1, self.norm2, self.conv2


class CrossAttention(nn.Module):
    def __init__(self, dim: int, value_dim: int, heads: int):
        super().__init__()
        self.norm_q = nn.RMSNorm(dim)
        self.norm_k = nn.RMSNorm(dim)
        self.norm_v = nn.RMSNorm(value_dim)  # feeds only the unused value path
        self.attention = nn.MultiheadAttention(
            dim, heads, vdim=value_dim, dropout=0.0, batch_first=True
        )


class CrossDecode(nn.Module):
    def __init__(self, dim: int, value_dim: int, heads: int):
        super().__init__()
        self.cross_attn = CrossAttention(dim, value_dim, heads)
        self.conv2d = nn.Conv2d(dim, dim, 3, padding=1, bias=False)


class SFT(nn.Module):
    """Spatial feature transform of the keys: ``gamma(f) * GN(keys) + beta(f)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Conv2d(dim, dim, 1, bias=False)
        self.beta = nn.Conv2d(dim, dim, 1, bias=False)


def _encoder(first: nn.Module, dim: int) -> nn.Sequential:
    return nn.Sequential(first, ResBlock(dim), ResBlock(dim))


def add_modules(m: nn.Module, channels: int, dim: int = QK_DIM, heads: int = HEADS) -> None:
    """Give ``m`` JAFAR's submodules for ``channels``-d features (its ``state_dict()``
    keys then equal a checkpoint's ``"jafar"`` entry)."""
    m.image_encoder = _encoder(nn.Conv2d(3, dim, 1, bias=False), dim)
    m.key_encoder = _encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
    m.query_encoder = _encoder(nn.Conv2d(dim, dim, 1, bias=False), dim)
    m.key_features_encoder = _encoder(nn.Conv2d(channels, dim, 1, bias=False), dim)
    m.cross_decode = CrossDecode(dim, channels, heads)
    m.sft_key = SFT(dim)
    m.rope = RoPE(dim)


def key_head(m: nn.Module, pooled: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """JAFAR's keys before their RMSNorm, (h*w, D): the pooled image keys (h, w, D),
    group-normalised over the grid, modulated by the encoded features (C, h, w)."""
    kfe = m.key_features_encoder
    f = F.conv2d(F.normalize(feats, dim=0)[None], kfe[0].weight.to(feats))[0]
    for blk in kfe[1:]:
        f = resblock_lowres(blk, f, GROUPS)
    keys = F.group_norm(pooled.permute(2, 0, 1)[None], GROUPS, eps=1e-5)
    sft = m.sft_key
    gamma = F.conv2d(f[None], sft.gamma.weight.to(f))
    beta = F.conv2d(f[None], sft.beta.weight.to(f))
    k = (gamma * keys + beta)[0]
    return k.reshape(k.shape[0], -1).t()


def global_attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor | None,
    shape: tuple[int, int],
    record=None,
    r0: int = 0,
) -> None:
    """Write ``out`` (C, R, W) (None: weights only) for queries ``q`` (R*W, heads, d)
    of ``shape`` (R, W) over all keys (h*w, heads, d); values (C, h*w).
    ``record(a, b, x0, x1, A)`` receives the weights (N, h*w) of output rows [a, b),
    columns [x0, x1). Queries go in groups whose scores fit in cache."""
    c, (n_rows, width) = values.shape[0], shape
    n_heads, n_keys = q.shape[1], keys.shape[0]
    kt = keys.permute(1, 2, 0)  # (heads, d, h*w)
    per_query = n_heads * n_keys * 4
    rows = max(1, SCORE_BYTES // (per_query * width))
    cols = width if per_query * width <= SCORE_BYTES else max(1, SCORE_BYTES // per_query)
    for a in range(0, n_rows, rows):
        b = min(n_rows, a + rows)
        for x0 in range(0, width, cols):
            x1 = min(width, x0 + cols)
            qq = q.view(n_rows, width, n_heads, -1)[a:b, x0:x1].reshape(-1, n_heads, q.shape[2])
            att = heads_softmax_mean(torch.bmm(qq.transpose(0, 1), kt))  # (N, h*w)
            if record is not None:
                record(r0 + a, r0 + b, x0, x1, att)
            if out is None:
                continue
            dst = out[:, a:b, x0:x1]
            if x1 - x0 == width or b - a == 1:
                # whole rows (or part of one): a (C, N) view, the product lands in place
                torch.mm(values, att.t(), out=dst.view(c, -1))
            else:
                dst.copy_((values @ att.t()).view(c, b - a, -1))


class DenseKernels(Kernels):
    """JAFAR's attention weights (every pixel over every key) for one (features, image)
    pair, one (H*W, h*w) matrix; any K-channel low-res map upsamples through them as
    the features do."""

    def __init__(self, size: tuple[int, int], store: torch.dtype | None = None):
        self.out_size, self.store = size, store
        self.weights: torch.Tensor | None = None  # (H, W, h*w)

    def record(self, a: int, b: int, x0: int, x1: int, att: torch.Tensor) -> None:
        if self.weights is None:
            dt = self.store or att.dtype
            self.weights = att.new_empty(*self.out_size, att.shape[-1], dtype=dt)
        # a copy: ``att`` may be a view of a larger per-head buffer
        self.weights[a:b, x0:x1] = att.view(b - a, x1 - x0, -1)

    def apply_linear(self, values: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        H, W = self.out_size
        r0, r1, _ = (rows or slice(0, H)).indices(H)
        bsz, k = values.shape[:2]
        out = values.new_empty(bsz, k, r1 - r0, W)
        step = max(1, (32 << 20) // max(1, 4 * k * W))  # output rows per product
        for bi in range(bsz):
            vals = values[bi].reshape(k, -1).to(self.weights.dtype)
            for a in range(r0, r1, step):
                b = min(r1, a + step)
                part = self.weights[a:b].view((b - a) * W, -1)
                o = vals @ part.t()
                out[bi, :, a - r0 : b - r0] = o.view(k, b - a, W)
        return out
