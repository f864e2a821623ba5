"""The napari view of a huge image's similarity map: time to first paint and per pan.

Opens what ``bench_large.py --zarr --workdir DIR`` left in DIR (the image, a chunked
zarr array, and the feature store of its run) in a real napari viewer (run it under
``xvfb-run -a -s "-screen 0 1400x1000x24"``), with the layers the FeatUp dock makes for
a large image (:class:`napari_featup.session.large.LargeStack`): the image as a
multiscale stack of zarr levels (an OME-Zarr-like pyramid, written here once and timed
apart) and the similarity map of a query point as a multiscale dask array whose
level-0 chunks are upsampled from the stored grid when napari shows them (coarser
levels are interpolated from the grid).

Times, each a wall-clock interval on the GUI thread until the canvas was rendered with
the new data (two renders: the first makes napari slice the chunks now visible at the
level it picked, the second draws them):

* query: the click's features (one block of the upsampler around the point) and the
  similarity layer's pyramid (nothing computed yet);
* first paint, whole image in view (napari shows a coarse level);
* first paint at full resolution (zoom 1: canvas px = image px, level-0 chunks);
* pans at full resolution, each by half the canvas width (new chunks at each step).

    xvfb-run -a -s "-screen 0 1400x1000x24" python benchmarks/bench_view_large.py DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _harness import header, peak_rss_mb


def pyramid(path: Path, levels: int = 6) -> list:
    """Levels 1.. of the zarr image at ``path`` (every 2nd pixel of the level above),
    written once next to it; returns dask arrays of all levels."""
    import dask.array as da
    import zarr

    base = zarr.open_array(str(path), mode="r")
    out = [da.from_zarr(base)]
    prev = base
    for k in range(1, levels):
        p = path.with_name(f"{path.stem}_level{k}.zarr")
        if not p.exists():
            shape = tuple(-(-n // 2) for n in prev.shape)
            z = zarr.open_array(
                str(p), mode="w", shape=shape, chunks=(1024, 1024), dtype=prev.dtype
            )
            for r0 in range(0, prev.shape[0], 2048):
                z[r0 // 2 : (r0 + 2048) // 2] = prev[r0 : r0 + 2048][::2, ::2]
        prev = zarr.open_array(str(p), mode="r")
        out.append(da.from_zarr(prev))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--pans", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import napari
    from qtpy.QtWidgets import QApplication

    import napari_featup as nf
    from napari_featup.session.geometry import PlaneGeometry
    from napari_featup.session.large import LargeRun, LargeStack
    from napari_featup.source import ImageSource, open_image, preprocessing_of

    work = Path(args.workdir)
    image_path = work / "image.zarr"
    store_path = next(p for p in sorted(work.glob("*.zarr")) if p.name != "image.zarr"
                      and "_level" not in p.name)  # fmt: skip
    print(header("bench_view_large: napari view of a stored large image's similarity map"))
    t = time.perf_counter()
    levels = pyramid(image_path)
    print(f"image pyramid ({len(levels)} levels) ready in {time.perf_counter() - t:.0f} s "
          "(written once; not part of the view)")  # fmt: skip

    fs = nf.open_store(store_path)
    stored = fs[fs.names()[0]]
    meta = stored.metadata
    arr, origin = open_image(str(image_path))
    source = ImageSource(arr, "grey", {}, None, origin)
    prepared = preprocessing_of(source, scaling=meta["preprocessing"]["scaling"])
    bb = nf.load_backbone(meta["backbone"], weights="random")
    kw = {"weights": "random"} if meta["upsampler"] == "featup-jbu" else {}
    up = nf.load_upsampler(meta["upsampler"], backbone=bb, **kw)
    h, w = source.shape
    geometry = PlaneGeometry((), (h, w), [1.0, 1.0], [0.0, 0.0])
    stack = LargeStack("big", geometry, {}, LargeRun(stored, prepared, up, store_path))
    info = {
        "image": f"{h} x {w} {arr.dtype}",
        "grid": meta["grid"],
        "stride": meta["stride"],
        "upsampler": meta["upsampler"],
        "chunk": 512,
    }
    print("setup:", json.dumps(info))

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)
    app = QApplication.instance()
    canvas = viewer.window._qt_viewer.canvas

    def paint() -> float:
        t0 = time.perf_counter()
        for _ in range(2):
            app.processEvents()
            canvas.native.repaint()
            viewer.screenshot(canvas_only=True, flash=False)
        app.processEvents()
        return time.perf_counter() - t0

    viewer.add_image(levels, name="big", multiscale=True, contrast_limits=(0, 6000))
    paint()
    t0 = time.perf_counter()
    stack.set_query([[h / 2 + 37, w / 2 - 91]])
    data, kwargs, _ = stack.similarity_layer_data()
    query_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim = viewer.add_image(data, **kwargs)
    viewer.reset_view()
    overview_s = time.perf_counter() - t0 + paint()
    res = {"query_s": round(query_s, 2), "first_paint_whole_image_s": round(overview_s, 2),
           "whole_image_level": int(sim.data_level), "levels": len(data)}  # fmt: skip

    cw = canvas.native.width()
    viewer.camera.zoom = 1.0
    viewer.camera.center = (h / 2, w / 2)
    res["first_paint_zoom1_s"] = round(paint(), 2)
    res["zoom1_level"] = int(sim.data_level)
    pans = []
    for k in range(args.pans):
        viewer.camera.center = (h / 2, w / 2 + (k + 1) * cw / 2)
        pans.append(round(paint(), 2))
    res["pan_s"] = pans
    res["pan_median_s"] = float(np.median(pans))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    res["canvas_px"] = list(shot.shape[:2])
    res["peak_rss_mb"] = round(peak_rss_mb())
    print("view:", json.dumps(res))
    viewer.close()


if __name__ == "__main__":
    main()
