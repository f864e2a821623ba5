"""Per-backbone forward time and peak memory at 224, 448 and 896 px.

Each (backbone, size) runs in a fresh subprocess so peak memory is its own:
"peak +MB" is the process's peak RSS (VmHWM) minus its RSS just before the first
forward, i.e. the extra memory the forward needs on top of the loaded model ("model MB"
is the RSS the built model added). On CUDA it is torch's peak allocated memory during
the forwards instead. Time is the median of --repeat forwards after one warm-up;
"load" is the 1-minute load average when the row finished (other jobs slow it).
RANDOM weights (no downloads here); timings do not depend on weight values.

    python benchmarks/bench_backbones.py [--sizes 224 448 896] [--backbones dinov2 ...]
        [--repeat 3] [--device cpu|cuda] [--precision float32|float16] [--threads N]

``--backbones`` takes registered names, a group (featup, modern) or timm:<model name>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _harness import RANDOM_WEIGHTS, header, peak_rss_mb, rss_mb, set_threads, timed


def _child(name: str, size: int, a: argparse.Namespace) -> dict:
    import torch

    import napari_featup as nf
    from napari_featup.backbones._timm import import_timm

    set_threads(a.threads)
    import_timm()  # so that "model MB" is the model's, not timm's import
    start = rss_mb()
    t0 = time.perf_counter()
    bb = nf.load_backbone(name, weights="random", device=a.device, precision=a.precision)
    build = time.perf_counter() - t0
    x = torch.randn(1, 3, size, size, device=bb.device)
    cuda = bb.device.type == "cuda"
    before = rss_mb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    sync = torch.cuda.synchronize if cuda else None
    with torch.inference_mode():
        y = bb(x)
        t = timed(lambda: bb(x), repeat=a.repeat, warmup=0, sync=sync)
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else peak_rss_mb() - before
    return {
        "backbone": name,
        "size": size,
        "grid": list(y.shape[-2:]),
        "dim": y.shape[1],
        "build_s": build,
        "model_mb": before - start,
        "median_s": t["median_s"],
        "peak_extra_mb": extra,
    }


def _names(requested: list[str] | None) -> list[str]:
    import napari_featup as nf
    from napari_featup.backbones import GROUPS

    if not requested:
        return nf.list_backbones()
    out: list[str] = []
    for r in requested:
        out += nf.list_backbones(r) if r in GROUPS else [r]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="*", default=None)
    p.add_argument("--sizes", nargs="*", type=int, default=[224, 448, 896])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="float32")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(a.child[0], int(a.child[1]), a)))
        return

    names = _names(a.backbones)
    set_threads(a.threads)
    title = f"bench_backbones: 1 image, {a.precision}, median of {a.repeat} after a warm-up"
    print("# " + header(title, weights=RANDOM_WEIGHTS, device=a.device))
    mem = "peak +MB (CUDA)" if a.device.startswith("cuda") else "peak +MB"
    wn = max(18, *(len(n) for n in names))
    print(
        f"{'backbone':<{wn}} {'size':>5} {'grid':>7} {'dim':>5} {'build s':>8} {'model MB':>9} "
        f"{'median s':>9} {mem:>9} {'load':>5}"
    )
    for name in names:
        for size in a.sizes:
            cmd = [sys.executable, __file__, "--child", name, str(size)]
            cmd += ["--repeat", str(a.repeat), "--device", a.device]
            cmd += ["--precision", a.precision, "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                last = (out.stderr.strip().splitlines() or ["?"])[-1]
                print(f"{name:<{wn}} {size:>5} failed: {last}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grid = "x".join(map(str, r["grid"]))
            print(
                f"{name:<{wn}} {size:>5} {grid:>7} {r['dim']:>5} {r['build_s']:>8.1f} "
                f"{r['model_mb']:>9.0f} {r['median_s']:>9.3f} {r['peak_extra_mb']:>9.0f} "
                f"{os.getloadavg()[0]:>5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
