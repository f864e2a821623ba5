"""Peak memory of the implicit fit and of interacting with its result.

Each case runs in a fresh subprocess (peak RSS from VmHWM is then its own) on the
astronaut resized to the case's size, dinov2 with RANDOM weights (memory does not
depend on weight values), CPU, 1 thread:

* ``fit``: the whole fit with a preset's views and a few steps (memory per step does
  not grow with the step count); reported above the RSS once the backbone is loaded.
  Images above ``max_fit_pixels`` (2 x 224^2) are fitted downscaled, so the peak stops
  growing there.
* ``field``: the pipeline with ``featup-implicit`` at the given size, then what the
  plugin does on a click (similarity) and PCA colours: peak RSS of the process, and the
  size of what the interaction keeps per pixel.

    python benchmarks/bench_implicit_memory.py [--sizes 224 448 1024] [--field-size 2048]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _harness import header, peak_rss_mb, rss_mb


def _image(h: int, w: int):
    import numpy as np
    from skimage import data
    from skimage.transform import resize

    return (resize(data.astronaut(), (h, w), anti_aliasing=True) * 255).astype(np.uint8)


def child_fit(size: int, settings: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from napari_featup import load_backbone
    from napari_featup.upsamplers.implicit import fit_implicit

    bb = load_backbone("dinov2", weights="random", device="cpu")
    img = _image(size, size)
    base = rss_mb()
    t0 = time.perf_counter()
    feats = fit_implicit(img, bb, settings=settings, steps=steps, seed=0)
    return {
        "case": "fit",
        "size": f"{size}x{size}",
        "settings": settings,
        "steps": steps,
        "fit_size": list(feats.fit_size),
        "seconds": round(time.perf_counter() - t0, 1),
        "backbone_loaded_mb": round(base),
        "peak_above_mb": round(peak_rss_mb() - base),
    }


def child_field(size: int, settings: str, steps: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import napari_featup as nf

    img = _image(size, size)
    t0 = time.perf_counter()
    res = nf.extract_features(
        img,
        "dinov2",
        "featup-implicit",
        weights="random",
        device="cpu",
        highres=False,
        upsampler_options={"settings": settings, "steps": steps},
    )
    sim = res.field.similarity([(size // 2, size // 3)])
    rgb = res.field.pca_rgb(res.fit_pca())
    assert sim.shape == (size, size) and rgb.shape == (size, size, 3)
    dense = res.field._dense
    return {
        "case": "field",
        "size": f"{size}x{size}",
        "settings": settings,
        "steps": steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "kept_per_pixel": f"{dense.shape[0]} x {dense.dtype}".replace("torch.", ""),
        "kept_mb": round(dense.numel() * dense.element_size() / 2**20),
        "float32_features_would_be_mb": round(res.lowres.shape[0] * size * size * 4 / 2**20),
        "peak_rss_mb": round(peak_rss_mb()),
        "finite": bool(np.isfinite(sim).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 1024])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["fast", "preview"],
        help="presets to fit (featup: its 3000 views take ~10 min to featurise here)",
    )
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--field-size", type=int, default=2048, help="0: skip the field case")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        case, size, settings, steps = args.child
        fn = child_fit if case == "fit" else child_field
        print(json.dumps(fn(int(size), settings, int(steps))))
        return
    print(header("bench_implicit_memory: peak RSS of implicit fits (children on 1 thread)"))
    cases = [("fit", s, st) for st in args.settings for s in args.sizes]
    if args.field_size:
        cases.append(("field", args.field_size, "preview"))
    for case, size, settings in cases:
        cmd = [sys.executable, __file__, "--child", case, str(size), settings, str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = (out.stdout.strip().splitlines() or [""])[-1]
        print(
            line
            if out.returncode == 0 and line.startswith("{")
            else f"{case} {size} {settings}: failed (rc {out.returncode}): {out.stderr[-1500:]}"
        )


if __name__ == "__main__":
    main()
