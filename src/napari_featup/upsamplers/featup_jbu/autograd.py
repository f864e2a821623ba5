"""A differentiable evaluation of FeatUp's JBU stack, for training, built like the fast path.

``kernels.py`` evaluates the stack under ``no_grad`` with in-place buffers; the
straightforward ``reference.py`` is differentiable but builds the C-channel bicubic
upsample and a (32 x 49 x H x W) unfold per layer. This module keeps the fast path's
formulation and gives it gradients:

* :class:`FoldedApply` -- the folded per-pixel kernels applied as batched matrix
  products over 4 x 4 source tiles (``(64, 100) @ (100, K)``, as in ``kernels.py``),
  with a backward pass that is two more such products per tile: ``mat^T @ grad`` for the
  source (windows scattered back in 9 block adds) and ``grad @ win^T`` for the kernels.
* :class:`RangeLogits` -- the 49 neighbour dot products of the range embedding, in
  row pieces on channels-last data (no unfold), with a hand-written backward.
* :func:`layer_kernels` -- softmax, spatial Gaussian, renormalisation and ``fixup_proj``
  in plain autograd ops on channels-last tensors (49 channels: cheap), with optional
  Dropout2d masks given by the caller (so a seeded trainer controls every draw).
* :func:`stack_linear` -- the four layers on (B, K, h, w) values -> channels-last
  (B, 16h, 16w, K): the channel-shared part of the stack. The final ``x + 0.1 conv(x)``
  is channel-linear and is left to the caller (the trainer folds it into the low-res
  values it sends through, so K can be far below the feature dim).

The tests check values and gradients against ``reference.py`` (``gradcheck`` in float64
on tiny inputs, and a float32 comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ...ops import reflect_index
from .kernels import _fold_matrix, _tile_scatter_index
from .layer import DIAMETER, RADIUS, TAPS

if TYPE_CHECKING:
    from .layer import JBULayer
    from .stack import FeatUpJBU

_TH = 4  # source tile (rows = cols): 64 outputs read a 10 x 10 window
_WIN = _TH + 2 * RADIUS
#: bytes of tile windows per batched product (bounds working memory on large maps)
_CHUNK_BYTES = 48 << 20
#: bytes of the (rows, W, 7, 32) neighbour products in one op of RangeLogits
_PIECE_BYTES = 4 << 20


# -- applying folded kernels ---------------------------------------------------------------


def _geometry(n: int, m: int, k: int, itemsize: int) -> tuple[int, int, int, int]:
    """Tile rows, tile cols, padded width and tile rows per chunk."""
    rt, mt = -(-n // _TH), -(-m // _TH)
    per_row = mt * _WIN * _WIN * max(1, k) * itemsize
    return rt, mt, mt * _TH + 2 * RADIUS, max(1, _CHUNK_BYTES // per_row)


def _tile_values(kf: torch.Tensor, rt: int, mt: int) -> torch.Tensor:
    """One image's folded kernels (n, m, 2, 2, 7, 7) as per-tile rows (rt*mt, 3136)."""
    n, m = kf.shape[:2]
    kp = kf
    if (n, m) != (rt * _TH, mt * _TH):
        kp = kf.new_zeros(rt * _TH, mt * _TH, 2, 2, DIAMETER, DIAMETER)
        kp[:n, :m] = kf
    return kp.view(rt, _TH, mt, _TH, -1).transpose(1, 2).reshape(rt * mt, -1)


def _windows(pad: torch.Tensor, r0: int, r1: int, mt: int) -> torch.Tensor:
    """Source windows (tiles, 100, K) of tile rows [r0, r1) of a zero-padded (P, pw, K) map."""
    pw, k = pad.shape[1], pad.shape[2]
    return pad.as_strided(
        (r1 - r0, mt, _WIN, _WIN, k),
        (_TH * pw * k, _TH * k, pw * k, k, 1),
        pad.storage_offset() + r0 * _TH * pw * k,
    ).reshape((r1 - r0) * mt, _WIN * _WIN, k)


def _matrices(vals: torch.Tensor, idx: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """(tiles, 64, 100) tile matrices holding the 49 taps of each output, written into
    the zero buffer ``buf`` (every call writes the same positions, so the rest stays
    zero and the buffer is filled once per pass, not once per chunk)."""
    mat = buf[: vals.shape[0]]
    mat.index_copy_(1, idx, vals)
    return mat.view(vals.shape[0], 4 * _TH * _TH, _WIN * _WIN)


def _buffer(like: torch.Tensor, rt: int, mt: int, step: int) -> torch.Tensor:
    return like.new_zeros(min(rt, step) * mt, 4 * _TH * _TH * _WIN * _WIN)


def _padded(src: torch.Tensor, rt: int, pw: int) -> torch.Tensor:
    """One image's (n, m, K) source zero-padded by 3 (taps outside the grid weigh zero)."""
    n, m, k = src.shape
    pad = src.new_zeros(rt * _TH + 2 * RADIUS, pw, k)
    pad[RADIUS : RADIUS + n, RADIUS : RADIUS + m] = src
    return pad


def folded_apply_forward(kf: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Folded kernels (B, n, m, 2, 2, 7, 7) on channels-last ``src`` (B, n, m, K)
    -> (B, 2n, 2m, K): output ``(2y+py, 2x+px)`` is the 7 x 7 window of source pixels
    around ``(y, x)`` weighted by ``kf[:, y, x, py, px]``."""
    bsz, n, m, k = src.shape
    rt, mt, pw, step = _geometry(n, m, k, src.element_size())
    idx = _tile_scatter_index(_TH, _TH, src.device)
    out = src.new_empty(bsz, 2 * n, 2 * m, k)
    buf = _buffer(src, rt, mt, step)
    for b in range(bsz):
        vals = _tile_values(kf[b], rt, mt)
        pad = _padded(src[b], rt, pw)
        for r0 in range(0, rt, step):
            r1 = min(rt, r0 + step)
            mat = _matrices(vals[r0 * mt : r1 * mt], idx, buf)
            res = torch.bmm(mat, _windows(pad, r0, r1, mt))  # (tiles, 64, K)
            res = res.view(r1 - r0, mt, 2 * _TH, 2 * _TH, k).transpose(1, 2)
            res = res.reshape((r1 - r0) * 2 * _TH, mt * 2 * _TH, k)
            y0, y1 = 2 * _TH * r0, min(2 * n, 2 * _TH * r1)
            out[b, y0:y1] = res[: y1 - y0, : 2 * m]
    return out


def folded_apply_backward(
    kf: torch.Tensor, src: torch.Tensor, grad: torch.Tensor, need: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`folded_apply_forward` w.r.t. ``kf`` and ``src``."""
    bsz, n, m, k = src.shape
    rt, mt, pw, step = _geometry(n, m, k, src.element_size())
    idx = _tile_scatter_index(_TH, _TH, src.device)
    gk = kf.new_empty(kf.shape) if need[0] else None
    gs = src.new_empty(src.shape) if need[1] else None
    buf = _buffer(src, rt, mt, step) if need[1] else None
    blocks = [(0, _TH), (_TH, 2 * _TH), (2 * _TH, _WIN)]  # a 10-wide window in 4-blocks
    for b in range(bsz):
        vals = _tile_values(kf[b], rt, mt)
        pad = _padded(src[b], rt, pw)
        gpad = src.new_zeros(rt + 2, _TH, mt + 2, _TH, k) if need[1] else None
        gvals = vals.new_empty(vals.shape) if need[0] else None
        gout = grad[b]
        if (n, m) != (rt * _TH, mt * _TH):
            gout = grad.new_zeros(rt * 2 * _TH, mt * 2 * _TH, k)
            gout[: 2 * n, : 2 * m] = grad[b]
        for r0 in range(0, rt, step):
            r1 = min(rt, r0 + step)
            nt = (r1 - r0) * mt
            g = gout[2 * _TH * r0 : 2 * _TH * r1].view(r1 - r0, 2 * _TH, mt, 2 * _TH, k)
            g = g.transpose(1, 2).reshape(nt, 4 * _TH * _TH, k)
            win = _windows(pad, r0, r1, mt)
            if need[0]:
                gmat = torch.bmm(g, win.transpose(1, 2)).view(nt, -1)
                gvals[r0 * mt : r1 * mt] = gmat.index_select(1, idx)
                del gmat
            if need[1]:
                mat = _matrices(vals[r0 * mt : r1 * mt], idx, buf)
                gwin = torch.bmm(mat.transpose(1, 2), g).view(r1 - r0, mt, _WIN, _WIN, k)
                # windows overlap by 6: split each 10-wide window into blocks of 4, 4 and
                # 2, so the scatter is 9 block adds instead of 100 strided ones
                for qa, (a0, a1) in enumerate(blocks):
                    for qb, (b0, b1) in enumerate(blocks):
                        gpad[r0 + qa : r1 + qa, : a1 - a0, qb : qb + mt, : b1 - b0] += gwin[
                            :, :, a0:a1, b0:b1
                        ].permute(0, 2, 1, 3, 4)
                del mat, gwin
        if need[0]:
            kv = gvals.view(rt, mt, _TH, _TH, -1).transpose(1, 2).reshape(rt * _TH, mt * _TH, -1)
            gk[b] = kv[:n, :m].view(n, m, 2, 2, DIAMETER, DIAMETER)
        if need[1]:
            full = gpad.view((rt + 2) * _TH, (mt + 2) * _TH, k)
            gs[b] = full[RADIUS : RADIUS + n, RADIUS : RADIUS + m]
    return gk, gs


class FoldedApply(torch.autograd.Function):
    """Differentiable :func:`folded_apply_forward` (kernels and source both get gradients)."""

    @staticmethod
    def forward(ctx, kf: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        kf, src = kf.contiguous(), src.contiguous()
        ctx.save_for_backward(kf, src)
        return folded_apply_forward(kf, src)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kf, src = ctx.saved_tensors
        return folded_apply_backward(kf, src, grad.contiguous(), ctx.needs_input_grad[:2])


# -- the range kernel ----------------------------------------------------------------------


def _neighbours(emb: torch.Tensor, i: int, p0: int, p1: int) -> torch.Tensor:
    """(B, p1-p0, W, 7, D) view: the 7 column neighbours in tap row ``i`` of rows [p0, p1)."""
    bsz, _, wp, kd = emb.shape
    w = wp - 2 * RADIUS
    return emb.as_strided(
        (bsz, p1 - p0, w, DIAMETER, kd),
        (emb.stride(0), wp * kd, kd, kd, 1),
        emb.storage_offset() + (i + p0) * wp * kd,
    )


class RangeLogits(torch.autograd.Function):
    """``<e(neighbour), e(centre)>`` for the 49 taps: channels-last embedding
    (B, R+6, W+6, D), contiguous -> (B, R, W, 49), tap p = 7*i + j."""

    @staticmethod
    def forward(ctx, emb: torch.Tensor) -> torch.Tensor:
        emb = emb.contiguous()
        ctx.save_for_backward(emb)
        bsz, rp, wp, kd = emb.shape
        r, w = rp - 2 * RADIUS, wp - 2 * RADIUS
        centre = emb[:, RADIUS : RADIUS + r, RADIUS : RADIUS + w]
        out = emb.new_empty(bsz, r, w, DIAMETER, DIAMETER)
        piece = max(1, _PIECE_BYTES // (bsz * w * DIAMETER * kd * emb.element_size()))
        for i in range(DIAMETER):
            for p0 in range(0, r, piece):
                p1 = min(r, p0 + piece)
                nb = _neighbours(emb, i, p0, p1)
                out[:, p0:p1, :, i] = (nb * centre[:, p0:p1, :, None]).sum(-1)
        return out.view(bsz, r, w, TAPS)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (emb,) = ctx.saved_tensors
        bsz, rp, wp, kd = emb.shape
        r, w = rp - 2 * RADIUS, wp - 2 * RADIUS
        grad = grad.contiguous().view(bsz, r, w, DIAMETER, DIAMETER)
        centre = emb[:, RADIUS : RADIUS + r, RADIUS : RADIUS + w]
        gemb = torch.zeros_like(emb)
        gcen = emb.new_zeros(bsz, r, w, kd)
        piece = max(1, _PIECE_BYTES // (bsz * w * DIAMETER * kd * emb.element_size()))
        for i in range(DIAMETER):
            for p0 in range(0, r, piece):
                p1 = min(r, p0 + piece)
                g = grad[:, p0:p1, :, i]  # (B, P, W, 7)
                nb = _neighbours(emb, i, p0, p1)
                gcen[:, p0:p1] += (nb * g[..., None]).sum(-2)
                c = centre[:, p0:p1]
                for j in range(DIAMETER):
                    gemb[:, i + p0 : i + p1, j : j + w] += c * g[..., j, None]
        gemb[:, RADIUS : RADIUS + r, RADIUS : RADIUS + w] += gcen
        return gemb


def _conv_cl(seq, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """FeatUp's Sequential(conv1x1, GELU, Dropout2d, conv1x1) on channels-last ``x``;
    ``mask`` (B, hidden), already scaled by 1/(1-p), is the dropout (None: eval)."""
    c0, c1 = seq[0], seq[3]
    h = F.gelu(F.linear(x, c0.weight.flatten(1), c0.bias))
    if mask is not None:
        h = h * mask[:, None, None, :]
    return F.linear(h, c1.weight.flatten(1), c1.bias)


def _spatial(layer: JBULayer, dtype: torch.dtype) -> torch.Tensor:
    """(49,) spatial Gaussian of :meth:`JBULayer.spatial_kernel` in ``dtype`` (that one is
    float32; float64 here keeps ``gradcheck`` exact)."""
    sigma = layer.sigma_spatial.to(dtype)
    d = torch.linspace(-1, 1, DIAMETER, device=sigma.device, dtype=dtype)
    sq = d[:, None] ** 2 + d[None, :] ** 2
    return torch.exp(-sq / (2 * sigma**2)).reshape(TAPS)


def layer_kernels(
    layer: JBULayer,
    guidance: torch.Tensor,
    range_mask: torch.Tensor | None = None,
    fixup_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A layer's per-pixel kernels with gradients, channels-last: (B, 3, H, W) -> (B, H, W, 49).

    Same maths as :meth:`JBULayer.tap_kernels` (softmax range kernel times the spatial
    Gaussian, renormalised, plus ``0.1 * fixup_proj``); ``range_mask`` (B, 32) and
    ``fixup_mask`` (B, 49) are the layer's Dropout2d masks in training (None: eval).
    """
    h, w = guidance.shape[-2:]
    dev = guidance.device
    rows = reflect_index(torch.arange(-RADIUS, h + RADIUS, device=dev), h)
    cols = reflect_index(torch.arange(-RADIUS, w + RADIUS, device=dev), w)
    g = guidance.index_select(-2, rows).index_select(-1, cols).permute(0, 2, 3, 1)
    emb = _conv_cl(layer.range_proj, g, range_mask)  # (B, H+6, W+6, 32)
    temp = layer.range_temp.exp().clamp(1e-4, 1e4)
    k = torch.softmax(temp * RangeLogits.apply(emb), dim=-1)
    k = k * _spatial(layer, k.dtype)
    k = k / k.sum(-1, keepdim=True).clamp(1e-7)
    centre = g[:, RADIUS : RADIUS + h, RADIUS : RADIUS + w]
    return k + 0.1 * _conv_cl(layer.fixup_proj, torch.cat([k, centre], -1), fixup_mask)


def fold_kernels(k: torch.Tensor) -> torch.Tensor:
    """Channels-last kernels (B, 2n, 2m, 49) of one layer -> folded (B, n, m, 2, 2, 7, 7):
    the bicubic 2x upsample and reflect pad moved into the weights (see ``kernels.py``)."""
    bsz, hh, ww, _ = k.shape
    fr = _fold_matrix(hh, 0, hh, k.device).to(k.dtype)  # (Y, i, d)
    fc = _fold_matrix(ww, 0, ww, k.device).to(k.dtype)  # (X, j, e)
    k = k.view(bsz, hh, ww, DIAMETER, DIAMETER)
    t = torch.einsum("byxij,xje->byxie", k, fc)
    kf = torch.einsum("yid,byxie->byxde", fr, t)
    kf = kf.reshape(bsz, hh // 2, 2, ww // 2, 2, DIAMETER, DIAMETER)
    return kf.permute(0, 1, 3, 2, 4, 5, 6)


def stack_linear(
    stack: FeatUpJBU,
    values: torch.Tensor,
    image: torch.Tensor,
    masks: list[tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
) -> torch.Tensor:
    """The four JBU layers, differentiable: (B, K, h, w) -> channels-last (B, 16h, 16w, K).

    The channel-shared part of the stack (no final ``x + 0.1 conv(x)``). Gradients reach
    ``values`` and every layer parameter. ``masks``: per layer ``(range, fixup)`` Dropout2d
    masks, or None for eval.
    """
    x = values.permute(0, 2, 3, 1)
    img = image.to(values.dtype)
    for lev, layer in enumerate(stack.layers):
        n, m = x.shape[1:3]
        guide = F.adaptive_avg_pool2d(img, (2 * n, 2 * m))
        rm, fm = masks[lev] if masks is not None else (None, None)
        kf = fold_kernels(layer_kernels(layer, guide, rm, fm))
        x = FoldedApply.apply(kf, x)
    return x


__all__ = [
    "FoldedApply",
    "RangeLogits",
    "fold_kernels",
    "folded_apply_backward",
    "folded_apply_forward",
    "layer_kernels",
    "stack_linear",
]
