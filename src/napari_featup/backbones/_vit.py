"""ViT token pipelines with the position-embedding resize of the code a checkpoint came from.

timm resizes position embeddings with antialiased bicubic interpolation to the target
grid. The code FeatUp runs does not, and a JBU stack trained on FeatUp's features sees
the difference, so the FeatUp families pass one of these resizers to :func:`vit_tokens`:

- :func:`offset_bicubic`: DINO's and DINOv2's ``interpolate_pos_encoding`` and FeatUp's
  MaskCLIP: bicubic, no antialias, ``scale_factor = (n + 0.1) / native`` (the +0.1
  changes where samples fall, not only the output size), skipped on the native grid.
- :func:`clip_fork`: FeatUp's CLIP fork: bilinear ``grid_sample`` at
  ``linspace(-1, 1, n)`` (align_corners, border), always applied. The fork assigns the
  samples to the wrong tokens on non-square grids; this resizer places them correctly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: (pos_embed (1, P + M*M, C), grid (h, w), P prefix positions) -> (1, P + h*w, C)
PosResize = Callable[[torch.Tensor, tuple[int, int], int], torch.Tensor]


def _split(pos: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prefix rows, the (1, C, M, M) patch grid, and M."""
    head, patch = pos[:, :prefix], pos[:, prefix:]
    m = math.isqrt(patch.shape[1])
    if m * m != patch.shape[1]:
        raise ValueError(f"position embedding of {patch.shape[1]} patches is not a square grid")
    return head, patch.reshape(1, m, m, -1).permute(0, 3, 1, 2), m


def _join(head: torch.Tensor, grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    flat = grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1])
    return torch.cat([head, flat.to(dtype)], dim=1)


def offset_bicubic(pos: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """DINO / DINOv2 hub / MaskCLIP resize: bicubic with a +0.1 scale offset, no antialias."""
    head, patch, m = _split(pos, prefix)
    h, w = grid
    if (h, w) == (m, m):  # these implementations return the table untouched here
        return pos
    out = F.interpolate(
        patch.float(),  # DINOv2 interpolates in float32 whatever the model dtype
        scale_factor=((h + 0.1) / m, (w + 0.1) / m),
        mode="bicubic",
        align_corners=False,
        antialias=False,
    )
    if tuple(out.shape[-2:]) != (h, w):  # cannot happen for grids >= 1: floor(n + 0.1) = n
        raise RuntimeError(f"position embedding resized to {tuple(out.shape[-2:])}, not {grid}")
    return _join(head, out, pos.dtype)


def clip_fork(pos: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """FeatUp's CLIP-fork resize (bilinear grid_sample, align_corners), correctly oriented.

    The fork samples row coordinates from the width axis and flattens column-major, which
    scrambles positions when h != w. Here row i samples y = linspace(-1, 1, h)[i] and
    column j samples x = linspace(-1, 1, w)[j]; on square grids the two agree exactly.
    """
    head, patch, _ = _split(pos, prefix)
    h, w = grid
    ys = torch.linspace(-1, 1, h, dtype=torch.float32, device=pos.device)
    xs = torch.linspace(-1, 1, w, dtype=torch.float32, device=pos.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([xx, yy], dim=-1).unsqueeze(0)  # grid_sample wants (x, y)
    out = F.grid_sample(
        patch.float(), coords, mode="bilinear", padding_mode="border", align_corners=True
    )
    return _join(head, out, pos.dtype)


def embed(model: nn.Module, x: torch.Tensor, resize: PosResize) -> tuple[torch.Tensor, int, int]:
    """A timm ViT's tokens before its blocks, with ``resize`` for the position embedding.

    ``model`` is built with ``dynamic_img_size=True`` (its patch embedding returns NHWC).
    Returns the (B, N, C) tokens and the grid (h, w).
    """
    x = model.patch_embed(x)
    b, h, w, c = x.shape
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = resize(model.pos_embed, (h, w), prefix)
    x = x.reshape(b, h * w, c)
    to_cat = [t.expand(b, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.no_embed_class:
        x = torch.cat([*to_cat, x + pos], dim=1)
    else:
        x = torch.cat([*to_cat, x], dim=1) + pos
    x = model.norm_pre(model.patch_drop(model.pos_drop(x)))
    return x, h, w


def value_path(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last block: ``proj(v(norm1(x)))``, no attention mixing, residual or MLP."""
    attn = block.attn
    b, n, _ = x.shape
    v = attn.qkv(block.norm1(x)).reshape(b, n, 3, -1)[:, :, 2]
    return attn.proj(attn.norm(v))


def vit_tokens(
    model: nn.Module, x: torch.Tensor, resize: PosResize, value_path_last: bool = False
) -> tuple[torch.Tensor, int, int]:
    """All tokens after the final norm (CLIP's ln_post), and the grid (h, w)."""
    x, h, w = embed(model, x, resize)
    blocks = list(model.blocks)
    for blk in blocks[:-1] if value_path_last else blocks:
        x = blk(x)
    if value_path_last:
        x = value_path(blocks[-1], x)
    return model.norm(x), h, w


def to_grid(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h*w, C) patch tokens, row-major -> (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
