"""Per-backbone forward time and peak memory at 224, 448 and 896 px.

Each (backbone, size) runs in a fresh subprocess so peak memory is its own:
"peak MB" is the process's peak RSS (VmHWM) minus its RSS just before the first
forward, i.e. the extra memory the forward needs on top of the loaded model.
Time is the median of --repeat forwards after that first one. Random weights (no
downloads here); timings do not depend on weight values.

    python benchmarks/bench_backbones.py [--sizes 224 448 896] [--backbones ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from _memory import peak_rss_mb, rss_mb


def _child(name: str, size: int, repeat: int, device: str) -> dict:
    import torch

    import napari_featup as nf

    bb = nf.load_backbone(name, weights="random", device=device)
    x = torch.randn(1, 3, size, size, device=bb.device)
    before = rss_mb()
    times = []
    with torch.inference_mode():
        for i in range(repeat + 1):
            t = time.perf_counter()
            y = bb(x)
            if bb.device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t)
    peak = peak_rss_mb()
    return {
        "backbone": name,
        "size": size,
        "grid": list(y.shape[-2:]),
        "dim": y.shape[1],
        "median_s": statistics.median(times),
        "peak_extra_mb": peak - before,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="*", default=None)
    p.add_argument("--sizes", nargs="*", type=int, default=[224, 448, 896])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child[0], int(a.child[1]), a.repeat, a.device)))
        return
    import torch

    import napari_featup as nf

    names = a.backbones or nf.list_backbones()
    print(
        f"# backbones on {a.device}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'backbone':<11} {'size':>5} {'grid':>9} {'dim':>5} {'median s':>9} {'peak +MB':>9}")
    for name in names:
        for size in a.sizes:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    str(size),
                    "--repeat",
                    str(a.repeat),
                    "--device",
                    a.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grid = "x".join(map(str, r["grid"]))
            print(
                f"{name:<11} {size:>5} {grid:>9} {r['dim']:>5} {r['median_s']:>9.3f} "
                f"{r['peak_extra_mb']:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
