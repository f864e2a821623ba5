"""Pieces AnyUp and JAFAR share as they are: the RoPE frequency parameter and a
ResBlock evaluated on the small low-res grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RoPE(nn.Module):
    """RoPE angular frequencies ``freqs`` (2, D) (row, column)."""

    def __init__(self, dim: int, theta: float = 100.0):
        super().__init__()
        f = theta ** torch.linspace(0, -1, dim // 4)
        f = torch.cat([f, f])
        freqs = torch.zeros(2, dim)
        freqs[0, : dim // 2] = f
        freqs[1, -dim // 2 :] = f
        self.freqs = nn.Parameter(freqs * 2 * torch.pi)


def resblock_lowres(blk: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    """A ResBlock (``blk.parts()`` -> GroupNorm, 1x1 conv, GroupNorm, 1x1 conv) on a
    small (D, h, w) map: GroupNorm over the whole grid."""
    n1, c1, n2, c2 = blk.parts()
    y = F.silu(F.group_norm(x[None], groups, n1.weight.to(x), n1.bias.to(x), n1.eps))
    y = F.conv2d(y, c1.weight.to(x))
    y = F.silu(F.group_norm(y, groups, n2.weight.to(x), n2.bias.to(x), n2.eps))
    return x + F.conv2d(y, c2.weight.to(x))[0]
