"""One joint bilateral upsampling layer of FeatUp's JBU stack (``JBULearnedRange``).

Parameter names and shapes match FeatUp's, so its state dicts load unchanged. The
stack does not call :meth:`JBULayer.forward` (the straightforward evaluation, see
``reference.py``): it takes the per-pixel kernels from :meth:`JBULayer.tap_kernels`
and applies them folded (``kernels.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .reference import reference_layer

#: half-width of a layer's kernel: 7 x 7 taps, tap p = 7*i + j over (row, col)
RADIUS = 3
DIAMETER = 2 * RADIUS + 1
TAPS = DIAMETER * DIAMETER
#: width of the range embedding
KEY_DIM = 32

#: bytes of the (rows, W, 7, 32) neighbour products computed in one op
_PIECE_BYTES = 4 << 20


class JBULayer(nn.Module):
    """One 2x joint bilateral upsampling layer (FeatUp's ``JBULearnedRange``).

    ``forward(source (B, C, h, w), guidance (B, 3, 2h, 2w)) -> (B, C, 2h, 2w)``.

    Parameters
    ----------
    guidance_dim
        Channels of the guidance image (3).
    key_dim
        Width of the range embedding (FeatUp: 32).
    """

    #: kernel half-width (7 x 7 taps); read by the reference evaluation
    radius: ClassVar[int] = RADIUS

    def __init__(self, guidance_dim: int = 3, key_dim: int = KEY_DIM):
        super().__init__()
        self.key_dim = int(key_dim)
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + TAPS, TAPS, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(TAPS, TAPS, 1),
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def spatial_kernel(self) -> torch.Tensor:
        """(49,) Gaussian over the tap offsets ``linspace(-1, 1, 7)``; tap p = 7*i + j."""
        d = torch.linspace(-1, 1, DIAMETER, device=self.sigma_spatial.device)
        sq = d[:, None] ** 2 + d[None, :] ** 2
        return torch.exp(-sq / (2 * self.sigma_spatial.float() ** 2)).reshape(TAPS)

    def _conv(self, seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        # eval-mode Sequential(conv, GELU, dropout, conv) in float32 whatever the module dtype
        c0, c1 = seq[0], seq[3]
        x = F.conv2d(x, c0.weight.float(), c0.bias.float())
        x = F.gelu(x)
        return F.conv2d(x, c1.weight.float(), c1.bias.float())

    def tap_kernels(self, guide: torch.Tensor) -> torch.Tensor:
        """Per-pixel kernels of the rows a guidance band covers, as FeatUp computes them.

        Softmax range kernel times the spatial Gaussian, renormalised, plus
        ``0.1 * fixup_proj``; computed in float32.

        Parameters
        ----------
        guide
            (B, 3, R+6, W+6): guidance reflect-padded by 3 on every side.

        Returns
        -------
        torch.Tensor
            (B, 49, R, W) kernels.
        """
        guide = guide.float()
        r, w = guide.shape[-2] - 2 * RADIUS, guide.shape[-1] - 2 * RADIUS
        emb = self._conv(self.range_proj, guide)  # (B, 32, R+6, W+6)
        emb = emb.permute(0, 2, 3, 1).contiguous()  # channels last: the dot products are contiguous
        centre = emb[:, RADIUS : RADIUS + r, RADIUS : RADIUS + w]
        bsz, _, wp, kd = emb.shape
        logits = emb.new_empty(bsz, DIAMETER, DIAMETER, r, w)
        piece = max(1, _PIECE_BYTES // (bsz * w * DIAMETER * kd * 4))
        for i in range(DIAMETER):
            for p0 in range(0, r, piece):
                p1 = min(r, p0 + piece)
                # the 7 column neighbours of every pixel as a strided view (no copy), then
                # one multiply-reduce per tap row: few large ops rather than 49 small ones
                nb = emb.as_strided(
                    (bsz, p1 - p0, w, DIAMETER, kd),
                    (emb.stride(0), wp * kd, kd, kd, 1),
                    emb.storage_offset() + (i + p0) * wp * kd,
                )
                prod = (nb * centre[:, p0:p1, :, None]).sum(-1)
                logits[:, i, :, p0:p1] = prod.permute(0, 3, 1, 2)
        logits = logits.view(bsz, TAPS, r, w)
        del emb, centre
        temp = self.range_temp.float().exp().clamp(1e-4, 1e4)
        logits.mul_(temp)
        k = torch.softmax(logits, dim=1)
        del logits
        k.mul_(self.spatial_kernel().view(1, TAPS, 1, 1))
        k.div_(k.sum(1, keepdim=True).clamp(1e-7))
        fix = self._conv(
            self.fixup_proj, torch.cat([k, guide[..., RADIUS : RADIUS + r, RADIUS : RADIUS + w]], 1)
        )
        return k.add_(fix, alpha=0.1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) values, (B, 3, 2h, 2w) guidance -> (B, C, 2h, 2w)."""
        return reference_layer(self, source, guidance)
