"""A batch of images into one store: serial against ``--workers 2``, and resume after a kill.

Writes ``--count`` (64) deterministic ``--size`` (256) px uint16 TIFFs, then runs the
command line on the folder (dinov2, random weights, bilinear, CPU):

1. serially (``OMP_NUM_THREADS=1``): wall time;
2. with ``--workers 2 --threads-per-worker 1`` (a dask LocalCluster): wall time, and
   every array of every image compared with the serial store bit for bit;
3. serially again into a fresh store, killed (SIGKILL) once about half the images are
   stored; then rerun: it must skip exactly the images that were complete, compute
   only the rest, and end equal, bit for bit, to the serial store.

    python benchmarks/bench_batch.py --count 64 --size 256
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _harness import header


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_featup.cli", "extract", *args],
        env=env,
        capture_output=True,
        text=True,
    )


def compare(a: Path, b: Path) -> tuple[int, int]:
    import napari_featup as nf

    sa, sb = nf.open_store(a), nf.open_store(b)
    names = sa.names()
    assert names == sb.names(), (names, sb.names())
    same = 0
    for n in names:
        ok = all(
            np.array_equal(sa[n].group[k][...], sb[n].group[k][...])
            for k in ("features", "pca", "pca_lowres")
        )
        same += ok
    return same, len(names)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(header(f"bench_batch: {args.count} images of {args.size}^2, dinov2 + bilinear"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    common = ["-b", "dinov2", "--weights", "random", "-u", "bilinear", "--device", "cpu", "-q"]
    import tifffile

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.count):
            tifffile.imwrite(
                folder / f"img{i:03d}.tif",
                rng.integers(500, 5000, (args.size, args.size)).astype(np.uint16),
            )
        t = time.perf_counter()
        p = cli([str(folder), "--store", str(tmp / "serial.zarr"), *common], env)
        t_serial = time.perf_counter() - t
        assert p.returncode == 0, p.stderr[-2000:]
        print(f"serial: {t_serial:.1f} s ({p.stdout.strip()})")

        t = time.perf_counter()
        p = cli(
            [
                str(folder),
                "--store",
                str(tmp / "dist.zarr"),
                *common,
                "--workers",
                str(args.workers),
                "--threads-per-worker",
                "1",
            ],
            env,
        )
        t_dist = time.perf_counter() - t
        assert p.returncode == 0, p.stderr[-2000:]
        same, n = compare(tmp / "serial.zarr", tmp / "dist.zarr")
        print(
            f"--workers {args.workers}: {t_dist:.1f} s ({p.stdout.strip()}); "
            f"{same}/{n} images identical to the serial run, bit for bit"
        )

        store = tmp / "resumed.zarr"
        cmd = [
            sys.executable,
            "-m",
            "napari_featup.cli",
            "extract",
            str(folder),
            "--store",
            str(store),
            *common,
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while proc.poll() is None and len(list(store.glob("*/zarr.json"))) < args.count // 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_at_kill = sorted(p.parent.name for p in store.glob("*/zarr.json"))
        partial = store.with_name(f".{store.name}.partial")
        left = [p.name for p in partial.iterdir()] if partial.is_dir() else []
        print(f"killed with {len(done_at_kill)} images stored; half-written left aside: {left}")
        t = time.perf_counter()
        p = cli([str(folder), "--store", str(store), *common], env)
        t_resume = time.perf_counter() - t
        m = re.search(r"(\d+) computed, (\d+) up to date", p.stdout)
        computed, skipped = int(m.group(1)), int(m.group(2))
        same, n = compare(tmp / "serial.zarr", store)
        print(
            f"resume: {t_resume:.1f} s; {computed} computed, {skipped} skipped "
            f"(expected {args.count - len(done_at_kill)} and {len(done_at_kill)}); "
            f"{same}/{n} images identical to the serial run"
        )


if __name__ == "__main__":
    main()
