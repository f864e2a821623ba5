"""Large images: peak memory, time and cancel latency of a tiled run into a feature store.

For an N x N uint16 grey image (default 8192, smooth structure plus noise), dinov2 at
its native 518 px tiles (overlap 0.25), each upsampler (default bilinear and featup-jbu,
random weights), CPU: ``extract_many`` writes the float16 grid and full-resolution PCA
colours into a zarr store (what ``napari-featup extract IMAGE --store S`` runs). Each
run is a fresh process; memory is its peak resident set (VmHWM, image included). The
estimate the command line prints is shown beside it.

Cancel latency: in fresh processes, a run is cancelled ``--cancel-after`` seconds into
the backbone, and again 1 s into the full-resolution colours (of a
``--cancel-colours-size`` image, 2048 by default: the latency is one colour block's
time whatever the size, and a smaller image gets there sooner); latency is the time from
``should_cancel`` returning True to ``Cancelled`` being raised (the tile or block in
flight is stopped or finished first, nothing is written).

With ``--zarr`` the image is first written to a chunked zarr array and read lazily from
it (``--downsample K`` sets the working scale), and the viewer-side cost is timed too:
one 512 x 512 chunk of the full-resolution similarity map (what napari computes per
visible chunk) and a whole overview level, from the stored grid.

    python benchmarks/bench_large.py --size 8192 --threads 1
    python benchmarks/bench_large.py --size 20000 --zarr --downsample 4 --upsampler bilinear
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import header, peak_rss_mb

HERE = Path(__file__).resolve().parent


def make_image(n: int, band: int = 1024):
    """Deterministic N x N uint16 grey image (cells-like blobs on a gradient, noise),
    generated band by band."""
    import numpy as np

    rng = np.random.default_rng(0)
    img = np.empty((n, n), np.uint16)
    x = np.arange(n, dtype=np.float32)
    for r0 in range(0, n, band):
        y = np.arange(r0, min(n, r0 + band), dtype=np.float32)[:, None]
        v = 3000 + 1500 * np.sin(x / 37.0) * np.cos(y / 53.0) + 800 * np.sin((x + y) / 211.0)
        v += rng.normal(0, 150, v.shape).astype(np.float32)
        img[r0 : r0 + len(y)] = np.clip(v, 0, 65535)
    return img


def write_zarr(n: int, path: str) -> None:
    import zarr

    z = zarr.open_array(path, mode="w", shape=(n, n), chunks=(1024, 1024), dtype="uint16")
    for r0 in range(0, n, 1024):
        z[r0 : r0 + 1024] = _band(n, r0)


def _band(n: int, r0: int, band: int = 1024):
    import numpy as np

    rng = np.random.default_rng(r0)
    x = np.arange(n, dtype=np.float32)
    y = np.arange(r0, min(n, r0 + band), dtype=np.float32)[:, None]
    v = 3000 + 1500 * np.sin(x / 37.0) * np.cos(y / 53.0) + 800 * np.sin((x + y) / 211.0)
    v += rng.normal(0, 150, v.shape).astype(np.float32)
    return np.clip(v, 0, 65535).astype(np.uint16)


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import napari_featup as nf
    from napari_featup.estimate import estimate_run

    if spec.get("zarr"):
        image = spec["zarr"]
        shape = (spec["size"], spec["size"])
    else:
        image = {"img": make_image(spec["size"])}
        shape = image["img"].shape
    kw = dict(
        backbone="dinov2",
        upsampler=spec["upsampler"],
        weights="random",
        upsampler_weights="random" if spec["upsampler"] == "featup-jbu" else None,
        device="cpu",
        downsample=spec.get("downsample"),
    )
    est = estimate_run(
        shape, "dinov2", spec["upsampler"], to_store=True, downsample=spec.get("downsample")
    )
    out: dict = {"estimate": est.summary(), "estimate_mb": est.peak_bytes / 2**20}
    state: dict = {}
    t0 = time.perf_counter()

    def on_event(ev):
        state.setdefault("first_" + ev.stage, time.perf_counter() - t0)

    def should_cancel():
        mode = spec.get("cancel")
        if mode is None or "t" in state:
            return "t" in state
        el = time.perf_counter() - t0
        if mode == "backbone" and el > spec["cancel_after"]:
            state["t"] = time.perf_counter()
        if mode == "colours" and "first_colours" in state and el > state["first_colours"] + 1:
            state["t"] = time.perf_counter()
        return "t" in state

    store = Path(spec["store"])
    try:
        nf.extract_many(image, store, progress=on_event, should_cancel=should_cancel, **kw)
        out["seconds"] = time.perf_counter() - t0
    except nf.Cancelled as exc:
        out["cancel_latency_s"] = time.perf_counter() - state["t"]
        out["cancelled_at"] = str(exc)[:120]
        out["store_images_after_cancel"] = nf.FeatureStore(store).names()
    out["peak_rss_mb"] = peak_rss_mb()
    out["stages_s"] = {k: round(v, 1) for k, v in state.items() if k.startswith("first_")}
    if spec.get("viewer") and "seconds" in out:
        out.update(viewer_times(store, spec))
    return out


def viewer_times(store: Path, spec: dict) -> dict:
    """Qt-free part of the napari view: dask chunks of the similarity map."""
    import numpy as np

    import napari_featup as nf
    from napari_featup.lazy import LazyField
    from napari_featup.source import ImageSource, open_image, preprocessing_of

    fs = nf.open_store(store)
    im = fs[fs.names()[0]]
    meta = im.metadata
    arr, origin = open_image(spec["zarr"])
    src = ImageSource(arr, "grey", {}, None, origin)
    prep = preprocessing_of(src, scaling=meta["preprocessing"]["scaling"])
    bb = nf.load_backbone("dinov2", weights="random")
    kw = {"weights": "random"} if spec["upsampler"] == "featup-jbu" else {}
    up = nf.load_upsampler(spec["upsampler"], backbone=bb, **kw)
    lazy = LazyField(im.features, prep, up, meta["stride"])
    q = np.asarray(im.features[:, 10, 10], np.float32)
    sim = lazy.to_dask("similarity", query=q, chunk=512)
    mid = spec["size"] // 2
    t = time.perf_counter()
    sim[mid : mid + 512, mid : mid + 512].compute()
    first = time.perf_counter() - t
    t = time.perf_counter()
    sim[mid : mid + 512, mid + 512 : mid + 1024].compute()
    pan = time.perf_counter() - t
    levels = lazy.pyramid("similarity", query=q, chunk=512)
    t = time.perf_counter()
    levels[-1].compute()
    overview = time.perf_counter() - t
    return {
        "chunk_512_first_s": round(first, 3),
        "chunk_512_pan_s": round(pan, 3),
        "overview_level": f"{len(levels) - 1} ({levels[-1].shape[0]} px)",
        "overview_s": round(overview, 3),
    }


def run(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + sys.path)
    p = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--upsampler", nargs="+", default=["bilinear", "featup-jbu"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cancel-after", type=float, default=30.0)
    ap.add_argument(
        "--cancel-colours-size",
        type=int,
        default=2048,
        help="image size for the cancel-during-colours runs (their latency is one colour "
        "block's time, whatever the image size; a smaller image reaches them sooner)",
    )
    ap.add_argument("--no-cancel", action="store_true")
    ap.add_argument("--zarr", action="store_true", help="read the image lazily from zarr")
    ap.add_argument("--downsample", type=float, default=None)
    ap.add_argument(
        "--workdir",
        default=None,
        help="keep the zarr image and the stores here (bench_view_large.py opens them); "
        "default: a temporary folder, removed after",
    )
    ap.add_argument("--worker", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    torch.set_num_threads(args.threads)
    print(header(f"bench_large: {args.size}^2 uint16 grey, dinov2 native tiles"))
    keep = contextlib.nullcontext(args.workdir) if args.workdir else None
    with keep or tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        Path(tmp).mkdir(parents=True, exist_ok=True)
        base = {"size": args.size, "threads": args.threads, "downsample": args.downsample}
        if args.zarr:
            t = time.perf_counter()
            base["zarr"] = str(Path(tmp) / "image.zarr")
            write_zarr(args.size, base["zarr"])
            print(f"wrote {base['zarr']} in {time.perf_counter() - t:.0f} s")
        for up in args.upsampler:
            spec = dict(base, upsampler=up, store=str(Path(tmp) / f"{up}.zarr"), viewer=args.zarr)
            res = run(spec)
            print(f"{up}: {json.dumps(res)}")
            if not args.no_cancel:
                for mode in ("backbone", "colours"):
                    spec_c = dict(
                        spec,
                        store=str(Path(tmp) / f"c{up}{mode}.zarr"),
                        cancel=mode,
                        cancel_after=args.cancel_after,
                        viewer=False,
                    )
                    if mode == "colours" and not args.zarr:
                        spec_c["size"] = min(args.size, args.cancel_colours_size)
                    print(f"{up} cancel during {mode}: {json.dumps(run(spec_c))}")


if __name__ == "__main__":
    main()
