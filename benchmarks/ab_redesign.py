"""Issue 11's "nothing got slower": upsampling at 224 px before and after the redesign.

Before is the tree at ``--before`` (default 3e5d1a9, the last commit before the
redesign), exported with ``git archive`` into a temporary folder; after is this
checkout's ``src``. Each round runs both in fresh processes, alternating which goes
first, so both see the same machine load; each process times ``--repeat`` calls of
``load_upsampler(name, "dino16")`` (featup-jbu with ``weights="random"``) on
(1, 384, 14, 14) features and a 224 px image after one warm-up call, with 1 torch
thread, and reports the median.
Random weights: these are speed figures of the code, never a model's quality.

Usage: python benchmarks/ab_redesign.py [--rounds 5] [--repeat 5]
       [--upsamplers featup-jbu,bilinear,jbu-classic]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _harness import header, set_threads

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from napari_featup.upsamplers import load_upsampler
name, repeat = sys.argv[1], int(sys.argv[2])
kw = {"weights": "random"} if name == "featup-jbu" else {}
up = load_upsampler(name, "dino16", device="cpu", **kw)
g = torch.Generator().manual_seed(0)
lowres = torch.randn(1, 384, 14, 14, generator=g)
image = torch.rand(1, 3, 224, 224, generator=g)
with torch.inference_mode():
    up(lowres, image)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        up(lowres, image)
        times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)[len(times) // 2]))
"""


def _export(commit: str, dest: Path) -> Path:
    archive = dest / "src.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def _time(src: Path, name: str, repeat: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        cwd=src.parent,
    )
    if out.returncode:
        raise SystemExit(f"{src} {name}: exit {out.returncode}\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="3e5d1a90540bfb006665f429c9555d7adff47e06")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--upsamplers", default="featup-jbu,bilinear,jbu-classic")
    args = ap.parse_args()
    set_threads(1)  # the children run with 1 thread; the header says so
    title = f"ab_redesign: 224 px, 384 x 14 x 14, before {args.before[:7]} vs this checkout"
    print(header(title), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": _export(args.before, Path(tmp)), "after": ROOT / "src"}
        for name in args.upsamplers.split(","):
            got: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for which in order:
                    got[which].append(_time(trees[which], name, args.repeat))
            b, a = (statistics.median(got[k]) * 1e3 for k in ("before", "after"))
            print(
                f"{name:12s} before {b:8.1f} ms  after {a:8.1f} ms  after/before {a / b:5.2f}"
                f"  (median of {args.rounds} processes x {args.repeat} calls; "
                f"per-process: before {[round(t * 1e3, 1) for t in got['before']]}, "
                f"after {[round(t * 1e3, 1) for t in got['after']]})",
                flush=True,
            )


if __name__ == "__main__":
    main()
