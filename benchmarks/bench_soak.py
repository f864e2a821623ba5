"""Soak test (issue 15): a long session in a real viewer; does anything grow?

A napari viewer (shown, under Xvfb: ``xvfb-run -a -s "-screen 0 1400x1000x24"``) with
the FeatUp dock runs the widget on ``--images`` images in a row (a new image layer each
time, the upsampler cycling through ``--upsamplers``), makes ``--clicks`` Ctrl-clicks
in all (the real mouse callback; the query cleared every ``--points`` clicks, so each
heatmap answers a few points), ``--exports`` exports (formats in turn) and a mask per
image, then deletes the image and its result layers (the query points too) before the
next one. After each image (and a ``gc.collect()``) it prints resident memory, open
file handles, threads, live layers and the image's click latency (median, p90) through
the widget handler including napari's redraw (``processEvents``).

Goal: after the first few images (models built, caches filled once per upsampler) no
growth beyond what live layers hold, and no rising click latency. The summary fits a
line to RSS, file handles and click latency over the images after ``--settle`` and
compares the last images' latency with the first ones'.

Random weights, small images: it measures the plugin's resources, not any model.

Usage: xvfb-run -a python benchmarks/bench_soak.py [--images 30] [--clicks 500]
       [--exports 10] [--size 160 208] [--threads 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _harness import header, rss_mb, set_threads

EXPORT_SUFFIXES = (".zarr", ".npz", ".tif", ".npy")
QUERY = "FeatUp query"


@dataclass
class Click:
    """The parts of a vispy mouse event the viewer's press callbacks read."""

    position: tuple
    modifiers: list = field(default_factory=lambda: ["Control"])
    type: str = "mouse_press"
    is_dragging: bool = False
    dims_displayed: tuple = (0, 1)
    view_direction: tuple | None = None
    button: int = 1
    handled: bool = False


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def scene(i: int, shape: tuple[int, int]) -> np.ndarray:
    """A different RGB scene per image: smooth blobs plus noise."""
    rng = np.random.default_rng(i)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3))
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 50)
        img += rng.uniform(0, 1, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
    img = img / img.max() * 220 + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def wait(signal, timeout_s: float = 600.0) -> list:
    """Run Qt's event loop until ``signal`` is emitted; returns its arguments."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop, got = QEventLoop(), []

    def done(*args):
        got.append(args)
        loop.quit()

    signal.connect(done)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec_()
    signal.disconnect(done)
    if not got:
        raise TimeoutError(f"no signal after {timeout_s} s")
    return list(got[0])


def reference_ms() -> float:
    """Milliseconds of a fixed CPU workload (numpy and Python, one thread), timed next
    to each image's clicks: the machine is shared, so click latency is also given as a
    multiple of this (a rising ratio would be the plugin, a rising load is not)."""
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    t0 = time.perf_counter()
    for _ in range(40):  # about 50 ms on an idle core: as long as a click
        a = np.tanh(a @ a.T / 256)
    sum(i * i for i in range(200_000))
    return (time.perf_counter() - t0) * 1000


def slope(y: list[float]) -> float:
    """Least-squares slope of ``y`` per image (0 for fewer than two values)."""
    if len(y) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(y)), np.asarray(y, float), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--clicks", type=int, default=500)
    ap.add_argument("--exports", type=int, default=10)
    ap.add_argument("--points", type=int, default=4, help="clicks per query before clearing")
    ap.add_argument("--size", type=int, nargs=2, default=(160, 208), metavar=("H", "W"))
    ap.add_argument("--backbone", default="dinov2")
    ap.add_argument(
        "--upsamplers", nargs="+", default=["bilinear", "jbu-classic", "featup-jbu", "guided-fit"]
    )
    ap.add_argument("--settle", type=int, default=5, help="images before the fits start")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the per-image rows as JSON")
    args = ap.parse_args()
    set_threads(args.threads)

    import napari
    from napari.utils.interactions import mouse_press_callbacks
    from qtpy.QtWidgets import QApplication

    print(header(f"bench_soak ({args.backbone} backbone, {args.size[0]} x {args.size[1]} RGB)"))
    print(
        f"{args.images} images, upsamplers {args.upsamplers} in turn, {args.clicks} clicks "
        f"(query cleared every {args.points}), {args.exports} exports, a mask per image; "
        "layers deleted after each image",
        flush=True,
    )
    t_start = time.perf_counter()
    rss0 = rss_mb()
    viewer = napari.Viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-featup", "FeatUp")
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData("random"))
    widget.device_combo.setCurrentText("cpu")
    widget.backbone_combo.setCurrentText(args.backbone)
    QApplication.processEvents()
    clicks_per = [
        args.clicks // args.images + (i < args.clicks % args.images) for i in range(args.images)
    ]
    export_at = set(np.linspace(0, args.images - 1, args.exports).round().astype(int).tolist())
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    exported = 0
    tmp = tempfile.TemporaryDirectory(prefix="bench_soak_")
    print(
        f"{'image':>5} {'upsampler':>11} {'run_s':>6} {'clicks':>6} {'click_med_ms':>12} "
        f"{'click_p90_ms':>12} {'ref_ms':>6} {'ratio':>5} {'rss_mb':>7} {'files':>5} "
        f"{'threads':>7} {'layers':>6} "
        f"{'t_s':>6}",
        flush=True,
    )
    for i in range(args.images):
        up = args.upsamplers[i % len(args.upsamplers)]
        widget.upsampler_combo.setCurrentText(up)
        if up == "featup-jbu":  # no published checkpoint offline: its random weights
            c = widget.upsampler_weights_combo
            c.setCurrentIndex(c.findData("random"))
        name = f"img{i:02d}"
        layer = viewer.add_image(scene(i, tuple(args.size)), name=name)
        t0 = time.perf_counter()
        assert widget.run()
        (status,) = wait(widget.run_finished)
        run_s = time.perf_counter() - t0
        if status != "done":
            raise RuntimeError(f"{name}: run {status}: {widget.last_error}")
        ref = [reference_ms()]
        times = []
        for k in range(clicks_per[i]):
            if k and k % args.points == 0:
                widget.clear_points()
            pix = rng.integers(0, args.size, 2)
            world = layer.data_to_world(pix)
            t1 = time.perf_counter()
            mouse_press_callbacks(viewer, Click(position=tuple(world)))
            QApplication.processEvents()  # the heatmap drawn
            times.append(time.perf_counter() - t1)
        ref.append(reference_ms())
        if clicks_per[i]:
            widget.make_mask(0.5)
        if i in export_at:
            widget.export(Path(tmp.name) / f"{name}{EXPORT_SUFFIXES[exported % 4]}")
            exported += 1
        widget.clear_points()
        # the query layer too: napari 0.9.2 on Mesa (Xvfb) segfaults in glDrawArrays when
        # an image is added after the only image was removed with a Points layer left
        # (reproduced without this plugin)
        for lyr in [x for x in viewer.layers if x.name.startswith(name) or x.name == QUERY]:
            viewer.layers.remove(lyr)
        QApplication.processEvents()
        gc.collect()
        ms = np.array(times) * 1000 if times else np.array([np.nan])
        row = {
            "image": i,
            "upsampler": up,
            "run_s": round(run_s, 2),
            "clicks": len(times),
            "click_median_ms": round(float(np.median(ms)), 1),
            "click_p90_ms": round(float(np.percentile(ms, 90)), 1),
            "reference_ms": round(float(np.mean(ref)), 1),
            "click_per_reference": round(float(np.median(ms)) / float(np.mean(ref)), 3),
            "rss_mb": round(rss_mb(), 1),
            "open_files": open_files(),
            "threads": threading.active_count(),
            "layers": len(viewer.layers),
            "stacks": len(widget.stacks),
            "t_s": round(time.perf_counter() - t_start, 1),
            "load": round(os.getloadavg()[0], 1),
        }
        rows.append(row)
        print(
            f"{i:>5} {up:>11} {row['run_s']:>6} {row['clicks']:>6} "
            f"{row['click_median_ms']:>12} {row['click_p90_ms']:>12} {row['reference_ms']:>6} "
            f"{row['click_per_reference']:>5} {row['rss_mb']:>7} "
            f"{row['open_files']:>5} {row['threads']:>7} {row['layers']:>6} {row['t_s']:>6}",
            flush=True,
        )
    viewer.close()
    tmp.cleanup()
    rest = rows[args.settle :]
    first, last = rows[args.settle : args.settle + 5], rows[-5:]
    summary = {
        "rss_before_viewer_mb": round(rss0, 1),
        "rss_after_settle_mb": rest[0]["rss_mb"] if rest else None,
        "rss_end_mb": rows[-1]["rss_mb"],
        "rss_slope_mb_per_image": round(slope([r["rss_mb"] for r in rest]), 2),
        "open_files_slope_per_image": round(slope([r["open_files"] for r in rest]), 3),
        "threads_start_end": [rest[0]["threads"], rows[-1]["threads"]] if rest else None,
        "click_median_slope_ms_per_image": round(slope([r["click_median_ms"] for r in rest]), 3),
        "click_per_reference_slope_per_image": round(
            slope([r["click_per_reference"] for r in rest]), 4
        ),
        "click_per_reference_first5_last5": [
            round(float(np.median([r["click_per_reference"] for r in first])), 3),
            round(float(np.median([r["click_per_reference"] for r in last])), 3),
        ],
        "threads_end": sorted(t.name for t in threading.enumerate()),
        "click_median_ms_first5_last5": [
            round(float(np.median([r["click_median_ms"] for r in first])), 1),
            round(float(np.median([r["click_median_ms"] for r in last])), 1),
        ],
        "live_layers_end": rows[-1]["layers"],
        "stacks_end": rows[-1]["stacks"],
        "exports": exported,
        "clicks": sum(r["clicks"] for r in rows),
        "total_s": round(time.perf_counter() - t_start, 1),
        "load_start_end": [rows[0]["load"], rows[-1]["load"]],
    }
    print("summary (fits over the images after --settle):")
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows,
                                              "summary": summary}, indent=1))  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
