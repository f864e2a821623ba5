"""Synthetic scenes with known full-resolution features: a yardstick for upsamplers.

A scene is an image made of regions with sharp, curved edges, each with its own colour
and a sinusoidal texture (two pairs of regions share a colour and differ only by texture),
crossed by thin structures (curves 3-5 px wide) of their own colours. Its ground-truth
features are

    F(p) = P tanh(G x(p) + g) / sqrt(E)

a fixed random projection P (dim x E) of a fixed nonlinear embedding of a small local
descriptor x(p): mean colour, luminance std and mean absolute luminance gradients in a
15 x 15 window. The window is restricted to the pixel's own region, so features are
piecewise smooth with sharp boundaries, like semantic features, and do not follow the
texture's stripes pixel by pixel. The "backbone output"
is F average-pooled over ``stride`` px patches, plus optional Gaussian noise.

:func:`score` measures how well an upsampled map recovers F: mean cosine similarity,
relative error in a band around region boundaries, IoU of the thin structures and mIoU
of all regions after nearest-prototype decoding (prototype = mean of F over a label),
and low-res consistency (the output average-pooled back to the grid vs the input).
Everything is deterministic given the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

EMBED_DIM = 64
EMBED_SEED = 20240607  # the feature function is the same for every scene


@dataclass
class Scene:
    """One synthetic scene.

    ``image`` (H, W, 3) float32 in [0, 1]; ``labels`` (H, W) int64, regions first then
    thin structures; ``thin_classes`` the labels of thin structures; ``features`` (D, H, W)
    float32 ground truth; ``lowres`` (D, H/stride, W/stride) float32 backbone stand-in.
    """

    image: np.ndarray
    labels: np.ndarray
    thin_classes: list[int]
    features: np.ndarray
    lowres: np.ndarray
    stride: int
    seed: int

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the scene's low-res grid."""
        return tuple(self.lowres.shape[-2:])


def _feature_function(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(EMBED_SEED)
    g = rng.normal(0.0, 2.5, (EMBED_DIM, 6))
    b = rng.normal(0.0, 0.5, EMBED_DIM)
    # The projection is drawn for the largest dim first so smaller dims are a prefix.
    p = np.random.default_rng(EMBED_SEED + 1).normal(0.0, 1.0, (max(dim, 512), EMBED_DIM))[:dim]
    return g, b, p


def _box_mean(values: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``values`` (N, H, W) over the masked pixels of each k x k window."""
    num = F.avg_pool2d((values * mask)[None], k, 1, k // 2, count_include_pad=True)[0]
    den = F.avg_pool2d(mask[None], k, 1, k // 2, count_include_pad=True)[0]
    return num / den.clamp_min(1e-6)


def _local_descriptor(image: np.ndarray, labels: np.ndarray, k: int = 15) -> np.ndarray:
    """(6, H, W): mean colour (3), luminance std, mean |d/dx| and mean |d/dy| of
    luminance over each pixel's k x k window restricted to its own region (k at least
    the longest texture period, so the stripes do not show)."""
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    lum = img.mean(0)
    lab = torch.from_numpy(labels)
    H, W = lum.shape
    gx = torch.zeros_like(lum)
    gy = torch.zeros_like(lum)
    gx[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
    gy[1:-1] = (lum[2:] - lum[:-2]) / 2
    # A gradient counts only where both neighbours lie in the pixel's region.
    okx = torch.zeros((H, W))
    oky = torch.zeros((H, W))
    okx[:, 1:-1] = ((lab[:, 2:] == lab[:, 1:-1]) & (lab[:, :-2] == lab[:, 1:-1])).float()
    oky[1:-1] = ((lab[2:] == lab[1:-1]) & (lab[:-2] == lab[1:-1])).float()
    vals = torch.cat(
        [img, lum[None], (lum * lum)[None], gx.abs()[None], gy.abs()[None]]
    )  # (7, H, W)
    out = torch.zeros((6, H, W))
    for v in torch.unique(lab).tolist():
        sel = lab == v
        m = sel.float()
        masks = torch.stack([m, m, m, m, m, m * okx, m * oky])
        loc = _box_mean(vals, masks, k)
        std = (loc[4] - loc[3] * loc[3]).clamp_min(0).sqrt()
        desc = torch.stack([loc[0], loc[1], loc[2], std, loc[5], loc[6]])
        out[:, sel] = desc[:, sel]
    return out.numpy()


def ground_truth_features(image: np.ndarray, labels: np.ndarray, dim: int = 384) -> np.ndarray:
    """F (dim, H, W) float32 of an (H, W, 3) image in [0, 1] with region ``labels``."""
    desc = torch.from_numpy(_local_descriptor(image, labels))
    desc[:3] -= 0.5
    desc[3:] *= 4.0
    g, b, p = (torch.from_numpy(t).float() for t in _feature_function(dim))
    H, W = desc.shape[-2:]
    e = torch.tanh(g @ desc.reshape(6, -1) + b[:, None])
    return ((p @ e) / np.sqrt(EMBED_DIM)).reshape(dim, H, W).numpy()


def _curve_mask(shape: tuple[int, int], rng: np.random.Generator, width: float) -> np.ndarray:
    """A random quadratic Bezier curve ``width`` px wide across the image."""
    H, W = shape
    p0, p1, p2 = (rng.uniform([0.05 * H, 0.05 * W], [0.95 * H, 0.95 * W]) for _ in range(3))
    t = np.linspace(0.0, 1.0, 4 * (H + W))[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    seed = np.ones(shape, bool)
    r = np.clip(np.round(pts).astype(int), 0, [H - 1, W - 1])
    seed[r[:, 0], r[:, 1]] = False
    return ndimage.distance_transform_edt(seed) <= (width - 1) / 2


def make_scene(
    size: int | tuple[int, int] = 224,
    seed: int = 0,
    dim: int = 384,
    stride: int = 16,
    n_regions: int = 8,
    n_thin: int = 3,
    noise: float = 0.0,
) -> Scene:
    """A deterministic synthetic scene; ``size`` must be a multiple of ``stride``.

    ``noise``: standard deviation of Gaussian noise added to the low-res grid, relative
    to the standard deviation of the ground-truth features.
    """
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if H % stride or W % stride or stride > H or stride > W:
        raise ValueError(f"scene size {H} x {W} must be a positive multiple of stride {stride}")
    if n_regions < 4:
        raise ValueError(f"n_regions must be at least 4, got {n_regions}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    # Curved region boundaries: a warped Voronoi partition.
    wy = sum(
        rng.uniform(6, 14) * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 2) / W + rng.uniform()))
        for _ in range(2)
    )
    wx = sum(
        rng.uniform(6, 14) * np.sin(2 * np.pi * (yy * rng.uniform(0.5, 2) / H + rng.uniform()))
        for _ in range(2)
    )
    centres = rng.uniform([0, 0], [H, W], (n_regions, 2))
    d2 = (yy[None] + wy[None] - centres[:, 0, None, None]) ** 2 + (
        xx[None] + wx[None] - centres[:, 1, None, None]
    ) ** 2
    labels = d2.argmin(0).astype(np.int64)

    colours = rng.uniform(0.15, 0.85, (n_regions, 3))
    colours[1] = colours[0]  # same colour, told apart by texture only
    colours[3] = colours[2]
    image = np.zeros((H, W, 3))
    for k in range(n_regions):
        m = labels == k
        amp, period, ang, ph = (
            rng.uniform(0.02, 0.12),
            rng.uniform(4, 14),
            rng.uniform(0, np.pi),
            rng.uniform(0, 2 * np.pi),
        )
        if k in (0, 2):
            amp = 0.01  # its twin (1 or 3) gets a strong texture
        tex = amp * np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period + ph)
        image[m] = colours[k] + tex[m, None]
    thin_classes = []
    for j in range(n_thin):
        m = _curve_mask((H, W), rng, width=float(rng.integers(3, 6)))
        lab = n_regions + j
        labels[m] = lab
        image[m] = rng.uniform(0.05, 0.95, 3)
        thin_classes.append(lab)
    image = np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)
    thin_classes = [c for c in thin_classes if (labels == c).any()]

    feats = ground_truth_features(image, labels, dim)
    low = F.avg_pool2d(torch.from_numpy(feats)[None], stride)[0].numpy()
    if noise > 0:
        low = low + np.random.default_rng(seed + 7919).normal(
            0, noise * feats.std(), low.shape
        ).astype(np.float32)
    return Scene(image, labels, thin_classes, feats, low.astype(np.float32), stride, seed)


def boundary_band(labels: np.ndarray, band: int = 3) -> np.ndarray:
    """Pixels within ``band`` px of a label boundary, (H, W) bool."""
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    return ndimage.distance_transform_edt(~edge) <= band


def decode(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Nearest prototype by cosine: (D, H, W), (N, D) -> (H, W) indices."""
    f = F.normalize(features.flatten(1), dim=0)
    p = F.normalize(prototypes, dim=1)
    return (p @ f).argmax(0).reshape(features.shape[1:])


def score(pred: np.ndarray | torch.Tensor, scene: Scene, band: int = 3) -> dict[str, float]:
    """Quality of an upsampled map ``pred`` (D, H, W) against the scene's ground truth.

    ``cos``: mean cosine similarity to F; ``boundary_err``: mean |pred - F| / mean |F|
    over pixels within ``band`` px of a label boundary; ``thin_iou``: mean IoU of the
    thin-structure labels and ``miou`` of all labels after nearest-prototype decoding;
    ``lowres_err``: |avgpool(pred) - lowres| / |lowres| over the grid (consistency).
    """
    p = torch.as_tensor(np.asarray(pred, dtype=np.float32))
    if p.ndim == 4 and p.shape[0] == 1:
        p = p[0]
    f = torch.from_numpy(scene.features)
    if p.shape != f.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != ground truth {tuple(f.shape)}")
    lab = torch.from_numpy(scene.labels)
    cos = F.cosine_similarity(p, f, dim=0)
    bmask = torch.from_numpy(boundary_band(scene.labels, band))
    err = torch.linalg.vector_norm(p - f, dim=0)
    fn = torch.linalg.vector_norm(f, dim=0)
    classes = torch.unique(lab)
    protos = torch.stack([f[:, lab == c].mean(1) for c in classes])
    dec = classes[decode(p, protos)]

    def iou(c: int) -> float:
        a, b = dec == c, lab == c
        return float((a & b).sum()) / max(1, int((a | b).sum()))

    low = torch.from_numpy(scene.lowres)
    pooled = F.avg_pool2d(p[None], scene.stride)[0]
    return {
        "cos": float(cos.mean()),
        "boundary_err": float(err[bmask].mean() / fn[bmask].mean()),
        "thin_iou": float(np.mean([iou(c) for c in scene.thin_classes]))
        if scene.thin_classes
        else float("nan"),
        "miou": float(np.mean([iou(int(c)) for c in classes])),
        "lowres_err": float(torch.linalg.vector_norm(pooled - low) / torch.linalg.vector_norm(low)),
    }


def scene_tensors(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """(lowres (1, D, h, w), guidance (1, 3, H, W) ImageNet-normalised) for upsamplers."""
    from .preprocess import normalize

    img = normalize(torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)))[None])
    return torch.from_numpy(scene.lowres)[None], img.float()
