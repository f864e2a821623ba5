"""The implicit model's networks: :class:`ImplicitNet`, the per-pixel MLP on Fourier
features of position and colour, and :class:`AttentionDownsampler`, FeatUp's learned
attention pooling from pixels back to the backbone grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...ops import gaussian_blur5


def _frequencies(n: int) -> torch.Tensor:
    return torch.exp(torch.linspace(-2.0, 10.0, n, dtype=torch.float64))


def dropout_mask(
    shape: tuple[int, ...], p: float, gen: torch.Generator | None, device
) -> torch.Tensor | None:
    """Inverted-dropout multipliers (0 or 1 / (1 - p)) of ``shape`` drawn from ``gen``;
    None when ``p`` <= 0 (nothing dropped)."""
    if p <= 0:
        return None
    keep = torch.rand(shape, generator=gen, device=device) >= p
    return keep.float() / (1.0 - p)


class ImplicitNet(nn.Module):
    """Per-pixel MLP on Fourier features of (y, x, colour) with learned phases.

    Input per pixel: 5 values (y, x in [-1, 1]; colour scaled to [-0.5, 0.5]) times
    ``n_freqs`` frequencies -> sin and cos with learned phases (2 * 5 * n_freqs) plus
    the scaled colour (3): 303 features for 30 frequencies. Then LayerNorm, dropout,
    Linear -> 128, ReLU, dropout, LayerNorm, Linear, ReLU, Linear: ``out_dim``
    features (the PCA space).
    """

    def __init__(self, n_freqs: int = 30, out_dim: int = 128):
        super().__init__()
        self.n_freqs = n_freqs
        in_dim = 2 * 5 * n_freqs + 3
        self.phases = nn.Parameter(torch.randn(2, 5, n_freqs))
        self.norm_in = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.norm_mid = nn.LayerNorm(out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)
        self.fc3 = nn.Linear(out_dim, out_dim)

    @staticmethod
    def encode(coords: torch.Tensor, colour: torch.Tensor, n_freqs: int) -> torch.Tensor:
        """The phase-free network input of each pixel: (N, 2) coords and (N, 3) scaled
        colour -> (N, 2 * 5 * n_freqs + 3) = [sin a, cos a, colour], a = input x frequency
        (index d * n_freqs + f for input d, frequency f).

        Computed in float64 (arguments reach e^10 ~ 22000) and returned in float32.
        """
        inp = torch.cat([coords, colour], dim=1).double()  # (N, 5)
        arg = (inp[:, :, None] * _frequencies(n_freqs).to(inp.device)).reshape(len(inp), -1)
        return torch.cat([torch.sin(arg), torch.cos(arg), inp[:, 2:]], dim=1).float()

    def _first_layer(self, m: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """fc1(dropout(LayerNorm(x))) as affine maps of the phase-free input ``e``.

        With learned phases p0, p1: x = [sin(a + p0), cos(a + p1), colour], and
        sin(a + p0) = sin a cos p0 + cos a sin p0 (likewise cos), so x = R(p) e is linear
        in e. LayerNorm's mean is then a dot product with e, its mean square a dot
        product with [sin^2 a, sin a cos a] (cos^2 = 1 - sin^2), and fc1 of the normed,
        dropped-out x is (e @ G.T - mean * u) / std + v. Returns G (out, in), the mean
        weights (in,), the mean-square weights (2 * 5F,) and constant, u and v (out,).
        """
        nf = 5 * self.n_freqs
        # FeatUp orders the Fourier channels frequency-major (f * 5 + d); e is d-major.
        perm = torch.arange(nf, device=self.phases.device).reshape(5, self.n_freqs)
        perm = ((perm % self.n_freqs) * 5 + perm // self.n_freqs).reshape(-1)
        p0, p1 = self.phases[0].reshape(nf), self.phases[1].reshape(nf)
        g = self.norm_in.weight if m is None else self.norm_in.weight * m
        beta = self.norm_in.bias if m is None else self.norm_in.bias * m
        w = self.fc1.weight
        ws, wc = (
            w[:, :nf][:, perm] * g[:nf][perm],
            w[:, nf : 2 * nf][:, perm] * g[nf : 2 * nf][perm],
        )
        c0, s0, c1, s1 = torch.cos(p0), torch.sin(p0), torch.cos(p1), torch.sin(p1)
        big_g = torch.cat([ws * c0 - wc * s1, ws * s0 + wc * c1, w[:, 2 * nf :] * g[2 * nf :]], 1)
        n_in = w.shape[1]
        mean_w = torch.cat([c0 - s1, s0 + c1, torch.ones(3, device=w.device)]) / n_in
        sq_w = (
            torch.cat(
                [torch.cos(2 * p0) - torch.cos(2 * p1), torch.sin(2 * p0) - torch.sin(2 * p1)]
            )
            / n_in
        )
        sq_c = (s0.square() + c1.square()).sum() / n_in
        return big_g, mean_w, sq_w, sq_c, w @ g, w @ beta + self.fc1.bias

    def forward(
        self,
        e: torch.Tensor,
        gen: torch.Generator | None = None,
        dropout: float = 0.0,
    ) -> torch.Tensor:
        """(N, 303) phase-free input from :meth:`encode` -> (N, out_dim).

        Same arithmetic as FeatUp's stack (phases, LayerNorm, dropout, fc1, ...) but the
        first layer is one matrix product on the constant ``e`` (see ``_first_layer``), so
        neither the 303 mixed features nor their gradients are ever formed.
        ``dropout`` > 0 (training) drops whole input and hidden channels, like FeatUp's
        Dropout2d on a one-image batch, with masks drawn from ``gen``.
        """
        nf = 5 * self.n_freqs
        m = dropout_mask((e.shape[1],), dropout, gen, e.device)
        big_g, mean_w, sq_w, sq_c, u, v = self._first_layer(m)
        mean = e @ mean_w
        with torch.no_grad():
            s = e[:, :nf]
            sq_in = torch.cat([s * s, s * e[:, nf : 2 * nf]], 1)
            col_sq = e[:, 2 * nf :].square().sum(1) / e.shape[1]
        var = (sq_in @ sq_w + sq_c + col_sq - mean.square()).clamp_min(0)
        rstd = torch.rsqrt(var + self.norm_in.eps)
        x = torch.addmm(-mean[:, None] * u, e, big_g.T) * rstd[:, None] + v
        x = F.relu(x)
        m = dropout_mask((1, x.shape[1]), dropout, gen, x.device)
        if m is not None:
            x = x * m
        x = F.relu(self.fc2(self.norm_mid(x)))
        return self.fc3(x)


class AttentionDownsampler(nn.Module):
    """FeatUp's learned attention pooling from pixels to the backbone grid.

    Each grid cell pools a (2s x 2s) window centred on its patch (s = stride) of the
    Gaussian-blurred map, weighted by ``softmax(logit * w + b)`` over the window, where
    ``logit = Linear(C -> 1)`` of the blurred pixel and ``w``, ``b`` are learned per
    window offset (initialised to 1 and 0, plus 0.01 noise). Inputs are (B, C, h*s, w*s)
    maps already blurred; the logits are passed in (they are linear in the map, so the
    caller computes them on one channel, see ``ImplicitFitter.objective``).
    """

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.stride = stride
        k = 2 * stride
        self.attn = nn.Linear(dim, 1)
        self.w = nn.Parameter(torch.ones(k, k) + 0.01 * torch.randn(k, k))
        self.b = nn.Parameter(torch.zeros(k, k) + 0.01 * torch.randn(k, k))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-pad (B, C, h*s, w*s) by s//2 before and s - s//2 after."""
        s = self.stride
        lo, hi = s // 2, s - s // 2
        mode = "reflect" if min(x.shape[-2:]) > hi else "replicate"
        return F.pad(x, (lo, hi, lo, hi), mode=mode)

    def _blocks(self, xp: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Padded (B, C, (h+1)*s, (w+1)*s) -> (B, C, h+1, s, w+1, s) blocks; window
        (i, j) is blocks (i..i+1, j..j+1)."""
        s = self.stride
        return xp.reshape(xp.shape[0], xp.shape[1], h + 1, s, w + 1, s)

    def attention(
        self,
        logits: torch.Tensor,
        grid: tuple[int, int],
        gen: torch.Generator | None = None,
        logit_mask: float = 0.0,
    ) -> torch.Tensor:
        """Padded (B, 1, (h+1)*s, (w+1)*s) pixel logits -> (B, h, w, 2, s, 2, s) weights."""
        h, w = grid
        s = self.stride
        bsz = logits.shape[0]
        lb = self._blocks(logits, h, w)[:, 0]  # (B, h+1, s, w+1, s)
        lwin = torch.stack(
            [torch.stack([lb[:, a : a + h, :, b : b + w] for b in (0, 1)], 0) for a in (0, 1)], 0
        )
        # (2a, 2b, B, h, s, w, s) -> (B, h, w, a, u, b, v): offset (a*s + u, b*s + v)
        lwin = lwin.permute(2, 3, 5, 0, 4, 1, 6).reshape(bsz, h, w, 4 * s * s)
        if logit_mask > 0:
            u = torch.rand((bsz, h, w, 1), generator=gen, device=logits.device)
            keep = (u >= logit_mask).float()
            lwin = lwin * keep
        attn = torch.softmax(lwin * self.w.reshape(-1) + self.b.reshape(-1), dim=-1)
        return attn.reshape(bsz, h, w, 2, s, 2, s)

    def pool(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Pool padded blurred maps (B, C, (h+1)*s, (w+1)*s) with window weights -> (B, C, h, w)."""
        bsz, h, w, _, s, _, _ = attn.shape
        blocks = self._blocks(x, h, w)  # (B, C, h+1, s, w+1, s)
        # weights per (a, b) placed on the blocks they read: block (i + a, j + b)
        wts = attn.new_zeros((bsz, 2, 2, h + 1, s, w + 1, s))
        for a in (0, 1):
            for b in (0, 1):
                wab = attn[:, :, :, a, :, b, :].permute(0, 1, 3, 2, 4)
                wts[:, a, b, a : a + h, :, b : b + w, :] = wab
        part = torch.einsum("bxyIuJv,bcIuJv->bxycIJ", wts, blocks)  # one pass over the map
        return sum(part[:, a, b, :, a : a + h, b : b + w] for a in (0, 1) for b in (0, 1))

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        gen: torch.Generator | None = None,
        logit_mask: float = 0.0,
    ) -> torch.Tensor:
        """Blur (B, C, h*s, w*s) and pool it to (B, C, h, w) (reference path)."""
        blurred = self.pad(gaussian_blur5(x))
        logits = torch.einsum("bchw,c->bhw", blurred, self.attn.weight[0])[:, None] + self.attn.bias
        return self.pool(blurred, self.attention(logits, grid, gen, logit_mask))


__all__ = ["AttentionDownsampler", "ImplicitNet", "dropout_mask"]
