"""Figures for the napari plugin (issue 4), on the code path the widget uses.

1. Click -> updated similarity heatmap on a 1024 x 1024 image with 384-d features
   (dinov2, random weights; bilinear and featup-jbu, whose cost does not depend on
   its weights so random ones are used; every registered upsampler with
   --all-upsamplers): median over clicks, target < 100 ms. The timed
   call is what the widget runs on a click: ``FeatureStack.set_query`` (features at
   the point) + ``FeatureStack.update_similarity`` (a 1-channel upsample of the
   query's low-res projection, divided by the cached norms). With ``--viewer`` the
   whole widget handler is timed too, including napari's layer refresh (needs a
   display: run under ``xvfb-run -a``).
2. A 2048 x 2048 uint16 grey image end to end on CPU with bilinear (the widget's
   worker: backbone, PCA, colours, norms; then the layers' arrays and one click),
   in a fresh process; prints its peak RSS, target <= 8 GB.
3. With --first-run: Run -> layers' data for the 512 px astronaut (dinov2, bilinear,
   CPU, the widget's worker), in fresh processes: the first run, the second, and the
   first after the widget's warm-up (session/warmup.py, done when the dock opens).

Clicks are answered from each plane's compact field (napari_featup.compact: at most
128 MB of coordinates per plane, exact norms); ``error_bound_median`` is the largest
error a click's map can have, as each map states it.

Usage: python benchmarks/bench_interaction.py [--clicks 30] [--all-upsamplers]
       [--upsamplers NAME ...] [--option KEY=VALUE ...] [--large-upsampler NAME]
       [--viewer] [--skip-large] [--first-run]

``--option`` passes upsampler options (e.g. steps=5 for featup-implicit: a click's
cost does not depend on how long the fit ran, only on what it keeps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
from _harness import header, peak_rss_mb


def _run(request):
    from napari_featup.progress import drive
    from napari_featup.session.run import iter_run

    out = drive(iter_run(request))
    if out.error is not None:
        raise out.error
    return out


def _stack(image, upsampler: str, device: str = "cpu", options: dict | None = None):
    from napari_featup.session import FeatureStack, PlaneGeometry
    from napari_featup.session.run import RunRequest

    opts = dict(backbone="dinov2", upsampler=upsampler, weights="random", device=device)
    if options:
        opts["upsampler_options"] = options
    if upsampler == "featup-jbu":
        # No downloads here; the cost of a JBU stack does not depend on its weights.
        opts["upsampler_weights"] = "random"
    req = RunRequest(image, [()], opts)
    t0 = time.perf_counter()
    out = _run(req)
    t_run = time.perf_counter() - t0
    geo = PlaneGeometry((), image.shape[:2], [1.0, 1.0], [0.0, 0.0])
    stack = FeatureStack("bench", geo, {})
    stack.add_planes(out.results, out.pca, out.colours, out.basis)
    return stack, t_run


def bench_clicks(
    upsampler: str, n_clicks: int, size: int = 1024, options: dict | None = None
) -> dict:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = ((np.sin(yy / 37.0) + np.cos(xx / 23.0)) * 60 + 128).astype(np.uint8)
    image = np.stack([image, image[::-1], image[:, ::-1]], axis=-1)
    stack, t_run = _stack(image, upsampler, options=options)
    times, query_times, bounds = [], [], []
    for _ in range(n_clicks):
        r, c = (int(v) for v in rng.integers(0, size, 2))
        t0 = time.perf_counter()
        stack.set_query([(r, c)])
        t1 = time.perf_counter()
        sim = stack.update_similarity(())
        times.append(time.perf_counter() - t0)
        query_times.append(t1 - t0)
        bounds.append(stack.similarity_bound.get((), 0.0))
        assert sim.shape == (size, size)
    ms = np.array(times) * 1000
    return {
        "upsampler": upsampler,
        "image": f"{size}x{size}",
        "dim": int(stack.metadata["dim"]),
        "basis_rank": stack.basis.rank if getattr(stack, "basis", None) else None,
        "run_s": round(t_run, 2),
        "clicks": n_clicks,
        "median_ms": round(float(np.median(ms)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "min_ms": round(float(ms.min()), 1),
        "max_ms": round(float(ms.max()), 1),
        "query_median_ms": round(float(np.median(query_times)) * 1000, 1),
        "error_bound_median": round(float(np.median(bounds)), 4),
    }


def bench_viewer_clicks(n_clicks: int, size: int = 1024) -> dict:
    """The widget's click handler in a headless viewer (points layer -> heatmap layer)."""
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    from napari_featup._qt import FeatUpWidget

    widget = FeatUpWidget(viewer)
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.device_combo.setCurrentText("cpu")
    yy, xx = np.mgrid[:size, :size]
    viewer.add_image(
        ((np.sin(yy / 37.0) + np.cos(xx / 23.0)) * 60 + 128).astype(np.uint8), name="bench"
    )
    done = []
    widget.run_finished.connect(done.append)
    widget.run()
    while not done:
        QApplication.processEvents()
        time.sleep(0.01)
    q = widget.ensure_query_layer()
    rng = np.random.default_rng(1)
    times = []
    for _ in range(n_clicks):
        r, c = (int(v) for v in rng.integers(0, size, 2))
        t0 = time.perf_counter()
        q.data = np.array([[r, c]], float)  # what a click in the query layer does
        QApplication.processEvents()
        times.append(time.perf_counter() - t0)
    viewer.close()
    ms = np.array(times) * 1000
    return {
        "what": "widget handler incl. napari layer refresh",
        "status": done[0],
        "median_ms": round(float(np.median(ms)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
    }


def large_image_child(upsampler: str, options: dict) -> None:
    """Run in a fresh process: 2048 x 2048 uint16 grey, CPU; print JSON."""
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    base = peak_rss_mb() / 1024
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 200, (2048, 2048)).clip(0, 65535).astype(np.uint16)
    t0 = time.perf_counter()
    stack, t_run = _stack(image, upsampler, options=options)
    stack.set_query([(1000, 1000)])
    stack.update_similarity(())
    stack.mask(0.5)
    print(
        json.dumps(
            {
                "image": "2048x2048 uint16",
                "upsampler": upsampler,
                "options": options,
                "device": "cpu",
                "total_s": round(time.perf_counter() - t0, 1),
                "run_s": round(t_run, 1),
                "peak_rss_gb": round(peak_rss_mb() / 1024, 2),
                "rss_after_imports_gb": round(base, 2),
            }
        )
    )


def first_run_child(warm: bool) -> None:
    """In a fresh process: seconds of the first run (after a warm-up when ``warm``)
    and of a second one; print JSON."""
    from skimage import data

    from napari_featup.session.run import RunRequest
    from napari_featup.session.warmup import iter_warm_up

    image = data.astronaut()
    extract = dict(backbone="dinov2", upsampler="bilinear", weights="random", device="cpu")
    out: dict = {"warm_up": warm}
    if warm:
        t0 = time.perf_counter()
        gen = iter_warm_up(dict(extract, scaling="auto"))
        for _ in gen:
            pass
        out["warm_up_s"] = round(time.perf_counter() - t0, 2)
    for key in ("first_run_s", "second_run_s"):
        t0 = time.perf_counter()
        _run(RunRequest(image, [()], dict(extract, scaling="auto"), rgb=True))
        out[key] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))


def bench_first_run() -> None:
    for warm in (False, True):
        cmd = [sys.executable, __file__, "--first-run-child"] + (["--warm"] if warm else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode != 0 or not line.startswith("{"):
            print(f"first run ({'warm' if warm else 'cold'}) failed: {proc.stderr[-2000:]}")
            continue
        label = "after the warm-up" if warm else "without a warm-up"
        print(f"Run -> layers, 512 px astronaut, {label}: {line}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=30)
    ap.add_argument("--all-upsamplers", action="store_true")
    ap.add_argument("--viewer", action="store_true")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--upsamplers", nargs="+", default=None, help="upsamplers to click on")
    ap.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="upsampler option for the non-bilinear runs, repeatable",
    )
    ap.add_argument("--large-upsampler", default="bilinear")
    ap.add_argument("--large-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-run", action="store_true", help="time the first Run")
    ap.add_argument("--first-run-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.first_run_child:
        first_run_child(args.warm)
        return
    from napari_featup.upsamplers import parse_options

    options = parse_options(args.option)
    if args.large_child:
        large_image_child(args.large_upsampler, options)
        return
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from napari_featup import list_upsamplers
    from napari_featup.upsamplers import upsampler_info

    names = list_upsamplers() if args.all_upsamplers else ["bilinear", "featup-jbu"]
    names = args.upsamplers or ([] if args.first_run and not args.all_upsamplers else names)
    print(
        header("bench_interaction (dinov2 backbone)")
        + (f" | upsampler options {options}" if options else "")
    )
    for n in names:
        # each upsampler gets the options it takes (a click's cost does not depend on
        # how long a fit ran, only on what it keeps)
        fields = {f.name for f in dataclasses.fields(upsampler_info(n).options)}
        own = {k: v for k, v in options.items() if k in fields}
        try:
            res = bench_clicks(n, args.clicks, options=own)
        except Exception as exc:  # noqa: BLE001
            print(f"{n}: failed: {type(exc).__name__}: {exc}")
            continue
        ok = "OK" if res["median_ms"] < 50 else "MISSED"
        print(f"click -> heatmap [{ok} target < 50 ms]: {json.dumps(res)}", flush=True)
    if args.first_run:
        bench_first_run()
    if args.viewer:
        res = bench_viewer_clicks(args.clicks)
        print(f"click -> heatmap in a viewer: {json.dumps(res)}")
    if not args.skip_large:
        cmd = [sys.executable, __file__, "--large-child", "--large-upsampler", args.large_upsampler]
        cmd += [f"--option={o}" for o in args.option]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = (proc.stdout.strip().splitlines() or [""])[-1]
        if proc.returncode != 0 or not line.startswith("{"):
            print(f"2048 x 2048 run failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        else:
            res = json.loads(line)
            ok = "OK" if res["peak_rss_gb"] <= 8 else "MISSED"
            print(f"2048 x 2048 uint16 end to end [{ok} target <= 8 GB]: {json.dumps(res)}")


if __name__ == "__main__":
    main()
