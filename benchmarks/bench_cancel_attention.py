"""Cancel latency inside an attention upsampler's encoding (AnyUp, JAFAR).

Encoding a whole image (whole-image GroupNorm statistics, pooled keys, queries) is one
step of a run and yields nothing for tens of seconds at 2048 px, so a Cancel checked
only between steps waited for all of it. The encoder's loops now call
``check_cancelled()``. For each upsampler and size: the time of the step run to the end
(``--full`` sizes only), and the time from setting the cancel flag, ``--after`` s into
the step, to ``Cancelled`` reaching the caller. 384 x (size/14)^2 features (a ViT-S/14
grid), random image, random weights.

Usage: python benchmarks/bench_cancel_attention.py [--sizes 1024 2048] [--full 1024]
       [--after 3] [--threads N] [--upsamplers anyup jafar]
"""

from __future__ import annotations

import argparse
import threading
import time

import torch
from _harness import RANDOM_WEIGHTS, header, set_threads

import napari_featup as nf
from napari_featup.progress import Cancelled, Progress, drive


def one_step(up, feats, image):
    yield Progress(0, 1, "upsampling")
    return up(feats, image)


def measure(name: str, size: int, after: float, full: bool) -> dict:
    opts = {"backbone": "dinov2"} if name == "jafar" else {}
    up = nf.load_upsampler(name, weights="random", device="cpu", **opts)
    g = torch.Generator().manual_seed(0)
    grid = -(-size // 14)
    feats = torch.randn(1, 384, grid, grid, generator=g)
    image = torch.rand(1, 3, size, size, generator=g)
    row = {"upsampler": name, "image": f"{size}x{size}"}
    if full:
        t0 = time.perf_counter()
        drive(one_step(up, feats, image))
        row["whole_step_s"] = round(time.perf_counter() - t0, 1)
    flag = threading.Event()
    timer = threading.Timer(after, flag.set)
    t0 = time.perf_counter()
    timer.start()
    try:
        drive(one_step(up, feats, image), should_cancel=flag.is_set)
        row["cancelled"] = False
    except Cancelled:
        row["cancelled"] = True
    end = time.perf_counter()
    timer.cancel()
    row["cancel_requested_at_s"] = after
    row["latency_s"] = round(end - t0 - after, 3) if row["cancelled"] else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--full", type=int, nargs="*", default=[1024])
    ap.add_argument("--after", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--upsamplers", nargs="+", default=["anyup", "jafar"])
    args = ap.parse_args()
    set_threads(args.threads)
    print(header("bench_cancel_attention", RANDOM_WEIGHTS))
    for name in args.upsamplers:
        for size in args.sizes:
            print(measure(name, size, args.after, size in args.full), flush=True)


if __name__ == "__main__":
    main()
