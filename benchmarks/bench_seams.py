"""Seam error: the tiled backbone against one untiled run, per backbone.

A 1024 x 1024 grey image (scikit-image's camera, resized, plus mild noise) goes through
each backbone (random weights) untiled (``tile_size=None``) and tiled at its native input
(518 px for DINOv2, 224 for FeatUp's ViTs and ResNet-50) with overlaps 0.25 and 0.5.
Printed: the relative error ``||tiled - untiled|| / ||untiled||`` of the grid, the median
per-cell relative error, and the same restricted to cells within one cell of a seam
(a tile boundary inside the image) against the rest, so blending faults would show as
a seam excess. A per-patch mock backbone (no context) is the exactness check: 0 up to
float rounding.

Random weights make this a code-path check: a trained ViT's features depend on context
differently (a tile sees other position embeddings and less of the image).

    python benchmarks/bench_seams.py --size 1024 --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _harness import header, set_threads


def image(n: int) -> np.ndarray:
    from skimage import data, transform

    cam = transform.resize(data.camera().astype(np.float32), (n, n), preserve_range=True)
    noise = np.random.default_rng(0).normal(0, 3, (n, n))
    return np.clip((cam + noise) * 200, 0, 65535).astype(np.uint16)


def seam_mask(plan) -> np.ndarray:
    h, w = plan.grid
    m = np.zeros((h, w), bool)
    for axis, starts in enumerate(plan.starts):
        size, tile = plan.grid[axis], plan.tile[axis]
        edges = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < size}
        for e in edges:
            sl = slice(max(0, e - 1), e + 1)
            if axis == 0:
                m[sl] = True
            else:
                m[:, sl] = True
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--backbones",
        nargs="+",
        default=["dinov2", "dino16", "vit", "clip", "maskclip", "resnet50"],
    )
    args = ap.parse_args()
    set_threads(args.threads)
    import napari_featup as nf
    from napari_featup.tiling import native_tile_size, plan_tiles

    print(header(f"bench_seams: {args.size}^2 grey, tiled vs untiled grid"))
    img = image(args.size)
    rows = []
    names = ["mock"] + args.backbones
    for name in names:
        if name == "mock":
            import sys
            from pathlib import Path

            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scale"))
            from conftest import patch_backbone

            bb = patch_backbone(14, 64)
        else:
            bb = nf.load_backbone(name, weights="random", device="cpu")
        t = time.perf_counter()
        ref = nf.extract_features(img, bb, tile_size=None, highres=False).lowres
        t_untiled = time.perf_counter() - t
        tile = 518 if name == "mock" else native_tile_size(bb)
        for ov in (0.25, 0.5):
            t = time.perf_counter()
            res = nf.extract_features(img, bb, tile_size=tile, tile_overlap=ov, highres=False)
            t_tiled = time.perf_counter() - t
            d = res.lowres - ref
            rel = float(np.linalg.norm(d) / np.linalg.norm(ref))
            cell = np.linalg.norm(d, axis=0) / np.maximum(np.linalg.norm(ref, axis=0), 1e-12)
            plan = plan_tiles(ref.shape[-2:], bb.patch_size, tile, ov)
            m = seam_mask(plan)
            seam = float(np.median(cell[m])) if m.any() else float("nan")
            rest = float(np.median(cell[~m]))
            rows.append(
                (
                    name,
                    tile,
                    ov,
                    plan.n_tiles,
                    rel,
                    float(np.median(cell)),
                    seam,
                    rest,
                    t_tiled,
                    t_untiled,
                )
            )
            print(
                f"{name:<9} tile {tile:>3} px overlap {ov:.2f} ({plan.n_tiles:>3} tiles): "
                f"relative error {rel:.3g}, median per cell {np.median(cell):.3g} "
                f"(seam cells {seam:.3g}, others {rest:.3g}); "
                f"{t_tiled:.1f} s tiled, {t_untiled:.1f} s untiled",
                flush=True,
            )


if __name__ == "__main__":
    main()
