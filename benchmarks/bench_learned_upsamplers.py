"""AnyUp and JAFAR (issue 18): ours against the upstream code, side by side on this CPU.

1. Speed and peak memory of one 384 x 16 x 16 -> S x S forward (S = 224, 448), ours
   and upstream's (AnyUp @ 351807a, JAFAR @ 94d4d54, plain-PyTorch attention), one
   thread, median of 3 after a warm-up; each (code, model, size) in a fresh process.
   Memory is the peak resident set during the timed forwards above the resident set
   before the warm-up (so buffers kept between calls count). Also: the FLOPs each code
   performs, the FLOPs the model needs (AnyUp's window keys only), and the floor they
   set at the GEMM rate measured in the same process.
2. ``--large 2048 4096``: our output at S x S (same 16 x 16 grid), computed in row tiles
   and consumed tile by tile (per-channel means), with its peak resident memory.
3. ``--click``: a click (similarity map) on a 1024 x 1024 image with 384-d features on a
   74 x 74 grid (DINOv2's at 1036 px; ``--click-grid 16`` for 16 x 16), from the
   field's compact form as the plugin answers it (and through FeatureField.similarity).

Weights are the seeded fixture checkpoints (cost does not depend on the weights).
The upstream code is never a dependency: pass ``--upstream DIR`` holding ``anyup/``
and ``jafar/`` (``git archive`` of the pinned commits) and ``--pydeps DIR`` with
``einops`` (JAFAR imports it), e.g. ``pip install --target DIR einops``.

Run: PYTHONPATH=src python benchmarks/bench_learned_upsamplers.py [--sizes 224 448]
     [--models anyup jafar] [--no-upstream] [--large 2048 4096] [--click] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))  # this checkout's package, as in the child processes
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "anyup-jafar"
CKPT = {"anyup": "anyup_seed1001.pth", "jafar": "jafar_384_seed2001.pth"}
D, C, HEADS = 128, 384, 4


# ----------------------------------------------------------------------- FLOPs
def window_keys(size: int, grid: int, band: bool = False) -> float:
    """Mean keys per output pixel of AnyUp's window (square case), or with ``band`` of
    the key bands our implementation scores (window rows x block key columns)."""
    from napari_featup.upsamplers.anyup.window import Windows, window_bounds

    lo, hi = window_bounds(size, grid, 0.1)
    if not band:
        return float((hi - lo).double().mean()) ** 2
    win = Windows.build((size, size), (grid, grid), 0.1, "cpu")
    rows = sum((e - s) * (hi - lo) for s, e, lo, hi in win.rows)
    return rows * sum((b.x1 - b.x0) * (b.k1 - b.k0) for b in win.blocks) / size**2


def flops(model: str, code: str, size: int, grid: int = 16) -> float:
    """FLOPs (2 per multiply-add) of one forward, per the code's own algorithm.

    Full-resolution 1x1 convs are D^2 per pixel, the query 3x3 conv 9 D^2; ``ours``
    pools the key encoder before its last conv (they commute), upstream does it at full
    resolution; upstream also runs MultiheadAttention's unused out-projection. Scores
    and the output cost D and C per (pixel, key): all h*w keys upstream, the key bands
    for ``ours``, the window's keys for ``required`` (AnyUp). Low-res work (< 1%) is
    left out.
    """
    px, n = size * size, grid * grid
    enc = 3 * D + 4 * D * D  # image encoder
    key = (4 if code != "upstream" else 5) * D * D
    query = 5 * D * D + 9 * D * D + D * D  # encoder, 3x3 conv, q projection
    extra = D * D if code == "upstream" else 0  # out_proj of MultiheadAttention
    if model == "jafar" or code == "upstream":
        keys = n
    else:
        keys = window_keys(size, grid, band=code == "ours")
    return 2.0 * px * (enc + key + query + extra + keys * (D + C))


# ----------------------------------------------------------------------- child runs
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM := current RSS
        f.write("5")


def _gemm_gflops() -> float:
    """Sustained (4096 x 128) @ (128 x 128) float32 rate, CPU time, this process."""
    import torch

    x, w = torch.randn(4096, D), torch.randn(D, D)
    x @ w
    best = 0.0
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(20):
            x @ w
        best = max(best, 20 * 2 * 4096 * D * D / max(1e-9, time.process_time() - t0) / 1e9)
    return best


def _inputs(size: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(1, C, 16, 16, generator=g), torch.randn(1, 3, size, size, generator=g)


def _build(code: str, model: str, upstream: str, pydeps: str):
    import torch

    ckpt = FIXTURES / CKPT[model]
    if code == "ours":
        import napari_featup as nf

        up = nf.load_upsampler(model, weights=ckpt, device="cpu")
        return lambda f, im: up(f, im)
    sys.path[:0] = [pydeps, f"{upstream}/anyup", f"{upstream}/jafar"]
    if model == "anyup":
        from anyup.model import AnyUp

        m = AnyUp().eval()
        m.load_state_dict(torch.load(ckpt, weights_only=True))
        return lambda f, im: m(im, f)
    import src.upsampler.jafar as J  # the JAFAR repo's layout

    make = J.create_coordinate
    J.create_coordinate = lambda h, w, *a, **k: make(h, w, device="cpu")  # it defaults to cuda
    m = J.JAFAR(input_dim=3, qk_dim=D, v_dim=C, feature_dim=C, kernel_size=1, num_heads=HEADS)
    m.eval().load_state_dict(torch.load(ckpt, weights_only=True)["jafar"], strict=False)
    return lambda f, im: m(im, f, tuple(im.shape[-2:]))


def child_forward(code: str, model: str, size: int, repeats: int, upstream: str, pydeps: str):
    import torch

    torch.set_num_threads(1)
    fwd = _build(code, model, upstream, pydeps)
    g = torch.Generator().manual_seed(0)
    feats, image = (
        torch.randn(1, C, 16, 16, generator=g),
        torch.randn(1, 3, size, size, generator=g),
    )
    with torch.no_grad():
        # memory is counted from before the warm-up, so buffers a code keeps between
        # calls (ours keeps its encoder workspace) count as its own
        base = _rss_mb()
        out = fwd(feats, image)
        checksum = float(out.double().mean())
        del out
        _reset_peak()
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = fwd(feats, image)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            del out
    peak = _peak_mb() - base
    wall.sort()
    cpu.sort()
    return {
        "wall_s": wall[len(wall) // 2],
        "cpu_s": cpu[len(cpu) // 2],
        "peak_mb": peak,
        "gemm_gflops": _gemm_gflops(),
        "checksum": checksum,
    }


def child_large(model: str, size: int, rows: int):
    import torch

    import napari_featup as nf

    torch.set_num_threads(1)
    base = _rss_mb()
    up = nf.load_upsampler(model, weights=FIXTURES / CKPT[model], device="cpu")
    g = torch.Generator().manual_seed(0)
    feats, image = (
        torch.randn(1, C, 16, 16, generator=g),
        torch.randn(1, 3, size, size, generator=g),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    means = torch.zeros(C, dtype=torch.float64)
    with torch.no_grad():
        for r in range(0, size, rows):
            tile = up.upsample(feats, image, rows=slice(r, min(size, r + rows)))
            means += tile[0].double().sum((1, 2))
    prep = up._cache[3][0]
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "peak_rss_mb": _peak_mb(),
        "rss_before_mb": base,
        "kept": prep.enc.kept,
        "sweeps": prep.enc.sweeps,
        "tile_rows": rows,
        "mean": float(means.sum() / (C * size * size)),
    }


def child_click(model: str, clicks: int, grid: int = 74):
    """Clicks as the plugin answers them: from the field's compact form (built once
    per image in the worker: the field evaluated in row tiles into P coordinates,
    exact norms and residuals), each click a query from the point and one P-channel
    product with its error bound; also a few through ``FeatureField.similarity`` (the
    upsampler's kernels or its dense output, C channels), the library's direct path."""
    import numpy as np
    import torch

    import napari_featup as nf
    from napari_featup.compact import similarity
    from napari_featup.field import FeatureField

    torch.set_num_threads(1)
    up = nf.load_upsampler(model, weights=FIXTURES / CKPT[model], device="cpu")
    g = torch.Generator().manual_seed(0)
    pad = 1036 if grid == 74 else 1024
    feats = torch.randn(1, C, grid, grid, generator=g)
    yy, xx = torch.meshgrid(torch.arange(pad), torch.arange(pad), indexing="ij")
    image = torch.stack([torch.sin(yy / 37.0), torch.cos(xx / 23.0), torch.sin((xx + yy) / 51.0)])
    t0, c0 = time.perf_counter(), time.process_time()
    field = FeatureField(feats, image[None].float(), up, (1024, 1024))
    form = field.compact()
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    rng = np.random.default_rng(0)
    times, bounds = [], []
    for _ in range(clicks):
        r, c = (int(v) for v in rng.integers(0, 1024, 2))
        t1 = time.perf_counter()
        _, bound = similarity(form, form.query([(r, c)]))
        times.append(time.perf_counter() - t1)
        bounds.append(bound)
    direct = []
    for _ in range(max(1, clicks // 4)):
        r, c = (int(v) for v in rng.integers(0, 1024, 2))
        t1 = time.perf_counter()
        field.similarity([(r, c)])
        direct.append(time.perf_counter() - t1)
    return {
        "path": "compact field",
        "rank": form.basis.rank,
        "max_bound": float(max(bounds)),
        "direct_path": "attention kernels" if field.linear else "dense store",
        "setup_s": build,
        "setup_cpu_s": build_cpu,
        "click_ms_median": 1000 * float(np.median(times)),
        "click_ms_p90": 1000 * float(np.percentile(times, 90)),
        "direct_ms_median": 1000 * float(np.median(direct)),
        "peak_rss_mb": _peak_mb(),
    }


def spawn(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env
    )
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[224, 448])
    ap.add_argument("--models", nargs="+", default=["anyup", "jafar"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--upstream", default="/work/scratch/upstream")
    ap.add_argument("--pydeps", default="/work/scratch/pydeps")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--large", type=int, nargs="*", default=[])
    ap.add_argument("--large-rows", type=int, default=64, help="output rows per tile")
    ap.add_argument("--click", action="store_true")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument(
        "--click-grid", type=int, default=74, help="74 (DINOv2 at 1036 px) or 16 (16 x 16)"
    )
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "forward":
            code, model, size = rest
            res = child_forward(code, model, int(size), a.repeats, a.upstream, a.pydeps)
        elif kind == "large":
            res = child_large(rest[0], int(rest[1]), int(rest[2]))
        else:
            res = child_click(rest[0], a.clicks, int(rest[1]))
        print(json.dumps(res))
        return 0

    load = os.getloadavg()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
        f"{platform.python_version()}; one torch thread per process; load average "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (a SHARED machine: wall times vary, CPU "
        "times are steadier); seeded fixture weights"
    )
    results: dict = {"load": load, "forward": [], "large": [], "click": []}
    codes = ["ours"] + ([] if a.no_upstream else ["upstream"])
    print(
        f"\n{'model':6s} {'size':>5s} {'code':9s} {'wall s':>7s} {'cpu s':>7s} {'peak MB':>8s} "
        f"{'GFLOP':>7s} {'floor s':>8s} {'cpu/floor':>9s} {'GEMM GF/s':>9s}"
    )
    for model in a.models:
        for size in a.sizes:
            row = {}
            for code in codes:
                r = spawn(["forward", code, model, str(size)])
                r.update(model=model, size=size, code=code, gflop=flops(model, code, size) / 1e9)
                results["forward"].append(r)
                row[code] = r
                if "error" in r:
                    print(f"{model:6s} {size:5d} {code:9s} failed: {r['error']}")
                    continue
                need = flops(model, "required", size) / 1e9
                floor = need / r["gemm_gflops"]
                r["floor_s"] = floor
                print(
                    f"{model:6s} {size:5d} {code:9s} {r['wall_s']:7.3f} {r['cpu_s']:7.3f} "
                    f"{r['peak_mb']:8.0f} {r['gflop']:7.1f} {floor:8.3f} "
                    f"{r['cpu_s'] / floor:9.2f} {r['gemm_gflops']:9.0f}"
                )
            o, u = row.get("ours", {}), row.get("upstream", {})
            if "cpu_s" in o and "cpu_s" in u:
                print(
                    f"{'':6s} {'':5s} ours vs upstream: {u['wall_s'] / o['wall_s']:.1f}x faster "
                    f"(wall), {u['cpu_s'] / o['cpu_s']:.1f}x (cpu); memory "
                    f"{o['peak_mb'] / max(1e-9, u['peak_mb']):.2f} of upstream's; checksums "
                    f"{o['checksum']:.6f} / {u['checksum']:.6f}"
                )
    print(
        "floor = FLOPs the model needs (window keys only for AnyUp) / the GEMM rate above; "
        "oneDNN's 3x3 convolution beats that rate (Winograd), so cpu/floor can be < 1"
    )
    for size in a.large:
        for model in a.models:
            r = spawn(["large", model, str(size), str(a.large_rows)])
            r.update(model=model, size=size)
            results["large"].append(r)
            if "error" in r:
                print(f"large {model} {size}: failed: {r['error']}")
                continue
            print(
                f"\n{model} 384 x 16 x 16 -> {size} x {size} (float32 output "
                f"{C * size * size * 4 / 2**30:.1f} GiB, made in {a.large_rows}-row tiles): "
                f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GiB (process before the model "
                f"{r['rss_before_mb'] / 1024:.2f} GiB), {r['wall_s']:.0f} s wall / "
                f"{r['cpu_s']:.0f} s cpu, encoder {'kept' if r['kept'] else 'swept'} "
                f"({r['sweeps']} sweeps)"
            )
    if a.click:
        for model in a.models:
            r = spawn(["click", model, str(a.click_grid)])
            r.update(model=model, grid=a.click_grid)
            results["click"].append(r)
            if "error" in r:
                print(f"click {model}: failed: {r['error']}")
                continue
            print(
                f"\nclick on 1024 x 1024, 384-d, {a.click_grid} x {a.click_grid} grid, {model}: "
                f"median {r['click_ms_median']:.0f} ms (p90 {r['click_ms_p90']:.0f}) from the "
                f"compact field (P = {r['rank']}, error bound <= {r['max_bound']:.2g}); "
                f"one-off setup {r['setup_s']:.1f} s wall / {r['setup_cpu_s']:.1f} s cpu, peak "
                f"RSS {r['peak_rss_mb'] / 1024:.2f} GiB; through FeatureField.similarity "
                f"({r['direct_path']}): {r['direct_ms_median']:.0f} ms"
            )
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
