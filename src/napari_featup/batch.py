"""Many images (folders, globs, stacks) into one feature store, on one or many machines.

:func:`extract_many` expands the inputs into 2-D planes (a z-stack or time series is a
batch over its planes), skips planes whose stored signature is current, and computes
the rest, serially or on a ``dask.distributed`` cluster (``workers=N`` starts a
LocalCluster; ``scheduler=ADDRESS`` uses a running one, e.g. from dask-jobqueue on
SLURM). Every plane is computed by the same function wherever it runs, and each worker
loads the models once, so results are bit for bit those of a serial run (at the same
number of threads). Each image is written atomically, so a killed batch resumes where
it stopped.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatUpError, ImageError
from .progress import Progress, drive, relay
from .source import ImageSource, open_image
from .store import FeatureStore, data_digest, file_stamp, make_signature
from .to_store import ExtractSettings, iter_extract_to_store

#: file suffixes picked up from a folder
IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".npy", ".png", ".jpg", ".jpeg", ".bmp")


class BatchError(FeatUpError):
    """Some images of a batch failed (the others were written); ``failures`` maps each
    image name to its error message."""

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        lines = "; ".join(f"{k}: {v}" for k, v in list(self.failures.items())[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} image(s) failed: {lines}{more}")


@dataclass
class BatchItem:
    """One 2-D plane to compute: from ``path`` (opened lazily where it runs) or an
    in-memory ``array``; ``fixed`` maps stack axes to indices."""

    name: str
    path: str | None = None
    array: Any = None
    fixed: dict[int, int] = field(default_factory=dict)
    channel_axis: int | None = None
    level: int | None = None

    def source(self, settings: ExtractSettings) -> ImageSource:
        """The plane as an :class:`ImageSource` (opening the file, never reading it whole)."""
        origin: dict = {}
        data = self.array
        if data is None:
            scale = settings.scale
            data, origin = open_image(
                self.path,
                pixels_per_patch=scale.pixels_per_patch,
                patch_size=scale.patch_size,
                level=self.level,
            )
        shape = tuple(int(v) for v in data.shape)
        free = [s for a, s in enumerate(shape) if a not in self.fixed]
        ch = None if self.channel_axis is None else self.channel_axis
        layout = _plane_layout(tuple(free), settings.rgb, ch, self.fixed)
        src = ImageSource(data, layout, dict(self.fixed), ch, origin)
        if self.fixed:
            src.origin["plane"] = {str(k): v for k, v in self.fixed.items()}
        return src


def _plane_layout(free: tuple[int, ...], rgb, channel_axis, fixed) -> str:
    from .source import _layout

    rel = None
    if channel_axis is not None:
        rel = channel_axis - sum(1 for a in fixed if a < channel_axis)
    return _layout(free, rgb, rel)


def _expand_paths(inputs: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for x in inputs:
        if not isinstance(x, (str, os.PathLike)):
            out.append(x)
            continue
        s = str(x)
        if any(c in s for c in "*?["):
            out += sorted(glob.glob(s, recursive=True))
        elif Path(s).is_dir() and Path(s).suffix.lower() != ".zarr":
            out += sorted(
                str(p)
                for p in Path(s).iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        else:
            if not Path(s).exists():
                raise FileNotFoundError(f"image {s!r} does not exist")
            out.append(s)
    return out


def _stack_axes(shape: tuple[int, ...], settings: ExtractSettings, origin: dict) -> list[int]:
    """Axes of an array that index planes (all but the two spatial and the channel or
    colour axis)."""
    axes = origin.get("axes")
    if axes:  # OME-Zarr names its axes: y, x, c and the rest (t, z) are planes
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        return [i for i, n in enumerate(names) if n not in ("y", "x", "c")]
    n = len(shape)
    if settings.channel_axis is not None:
        c = settings.channel_axis % n
        rest = [a for a in range(n) if a != c]
        return rest[:-2]
    colour = n >= 3 and (settings.rgb or (settings.rgb is None and shape[-1] in (3, 4)))
    return list(range(n - (3 if colour else 2)))


def expand_inputs(inputs: Any, settings: ExtractSettings) -> list[BatchItem]:
    """The planes of ``inputs``: paths (files, folders, globs), arrays (numpy, dask,
    zarr), or a dict name -> array; stacks become one item per plane."""
    if isinstance(inputs, dict):
        named = list(inputs.items())
    else:
        if isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "shape"):
            inputs = [inputs]
        expanded = _expand_paths(inputs)
        names = _unique_names(expanded)
        named = list(zip(names, expanded))
    items: list[BatchItem] = []
    for name, x in named:
        path = str(x) if isinstance(x, (str, os.PathLike)) else None
        if path is not None:
            data, origin = open_image(path)
        else:
            data, origin = x, {}
        shape = tuple(int(v) for v in data.shape)
        ch = None if settings.channel_axis is None else settings.channel_axis % len(shape)
        axes = origin.get("axes")
        if axes:
            names_ = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
            ch = names_.index("c") if "c" in names_ else None
        stack = _stack_axes(shape, settings, origin)
        arr = None if path is not None else x
        for idx in np.ndindex(*[shape[a] for a in stack]) if stack else [()]:
            fixed = {a: int(i) for a, i in zip(stack, idx)}
            label = name if not stack else name + "-" + "-".join(f"{i:04d}" for i in idx)
            items.append(BatchItem(label, path, arr, fixed, ch))
    if not items:
        raise ImageError(f"no images found in {inputs!r}")
    return items


def _unique_names(xs: Sequence[Any]) -> list[str]:
    stems = [
        Path(str(x)).name.split(".")[0] if isinstance(x, (str, os.PathLike)) else f"image{i:04d}"
        for i, x in enumerate(xs)
    ]
    out = []
    for i, (stem, x) in enumerate(zip(stems, xs)):
        if stems.count(stem) > 1 and isinstance(x, (str, os.PathLike)):
            parts = Path(str(x)).resolve().parts
            stem = "__".join(parts[-3:-1] + (stem,))
        out.append(stem if out.count(stem) == 0 else f"{stem}-{i}")
    return out


def _signature(item: BatchItem, src: ImageSource, settings: ExtractSettings, digest: bool):
    stamp = file_stamp(item.path) if item.path else None
    data = data_digest(src) if digest or stamp is None else None
    plane = tuple(sorted(item.fixed.items()))
    return make_signature(settings.signature_settings(), data, stamp, plane)


def run_item(
    item: BatchItem, store_path: str, settings: ExtractSettings, threads: int | None = None
) -> dict:
    """Compute one plane into the store (what a dask worker runs); returns a summary."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    store = FeatureStore(store_path, mode="a")
    src = item.source(settings)
    sig = _signature(item, src, settings, digest=True)
    drive(iter_extract_to_store(src, store, item.name, settings, sig))
    return {"name": item.name, "seconds": round(time.perf_counter() - t0, 3)}


@dataclass
class BatchReport:
    """What a batch did: images computed, skipped (current), failed (name -> error)."""

    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def iter_extract_many(
    inputs: Any,
    store: str | os.PathLike,
    settings: ExtractSettings | None = None,
    *,
    workers: int | None = None,
    scheduler: str | Any | None = None,
    threads_per_worker: int = 1,
    threads: int | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> Generator[Progress, None, FeatureStore]:
    """Extract features of many images into one zarr store, as a generator of
    :class:`~napari_featup.progress.Progress` events.

    Each image is written atomically under a signature of its input, model, scale and
    version: images already stored with a current signature are skipped, so a killed
    run resumes where it stopped.

    Parameters
    ----------
    inputs : path, array, list or dict
        A path, folder, glob, array, a list of them, or a dict name -> array; stacks
        (leading axes, or OME-Zarr ``t``/``z`` axes) are batches over their planes.
    store : str or os.PathLike
        The store's folder (created when missing).
    settings : ExtractSettings, optional
        What to compute; or give its fields as keywords.
    workers : int, optional
        Run on a local dask cluster of this many processes.
    scheduler : str or distributed.Client, optional
        A running cluster's address or client (workers must see the store's folder).
    threads_per_worker : int
        Torch threads per worker process.
    threads : int, optional
        Torch threads of a serial run (None: torch's default).
    overwrite : bool
        Recompute images whose signature is current.
    **kwargs
        :class:`~napari_featup.to_store.ExtractSettings` fields.

    Yields
    ------
    Progress

    Returns
    -------
    FeatureStore
        The store; its ``report`` says what was computed, skipped and failed.

    Raises
    ------
    BatchError
        After the run, when any image failed (the others are stored).
    """
    t0 = time.perf_counter()
    settings = settings or ExtractSettings(**kwargs)
    fs = FeatureStore(store, mode="a")
    fs.clean_partial()
    items = expand_inputs(inputs, settings)
    report = BatchReport()
    todo: list[BatchItem] = []
    for n, item in enumerate(items):
        yield Progress(0, len(items), f"checking {item.name} ({n + 1}/{len(items)})", "check")
        if not overwrite and item.name in fs:
            src = item.source(settings)
            if fs.is_current(item.name, _signature(item, src, settings, False), src):
                report.skipped.append(item.name)
                continue
        todo.append(item)
    done = len(report.skipped)
    total = len(items)
    if todo and (workers or scheduler):
        gen = _iter_distributed(todo, fs, settings, workers, scheduler, threads_per_worker)
        for ev in gen:
            if ev.stage == "image-done":
                report.computed.append(ev.message)
                done += 1
            elif ev.stage == "image-failed":
                name, _, err = ev.message.partition(": ")
                report.failed[name] = err
                done += 1
            yield Progress(done, total, ev.message, "batch")
    else:
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        for item in todo:
            label = f"{item.name} ({done + 1}/{total}): "
            try:
                src = item.source(settings)
                sig = _signature(item, src, settings, digest=True)
                inner = iter_extract_to_store(src, fs, item.name, settings, sig)
                yield from relay(inner, done, done + 1, total, prefix=label)
                report.computed.append(item.name)
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
                report.failed[item.name] = f"{type(exc).__name__}: {exc}"
            done += 1
    fs.drop_empty_partial()
    report.seconds = round(time.perf_counter() - t0, 3)
    yield Progress(total, total, "done", "done")
    fs.report = report
    if report.failed:
        err = BatchError(report.failed)
        err.store = fs
        raise err
    return fs


def _iter_distributed(
    items: list[BatchItem],
    fs: FeatureStore,
    settings: ExtractSettings,
    workers: int | None,
    scheduler: Any,
    threads_per_worker: int,
) -> Generator[Progress, None, None]:
    """Run the items on a dask cluster; yields one event per finished image."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(
            n_workers=int(workers),
            threads_per_worker=int(threads_per_worker),
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
    elif isinstance(scheduler, str):
        client = Client(scheduler)
    else:
        client = scheduler  # a Client or a LocalCluster object
        if not hasattr(client, "map"):
            client = Client(scheduler)
    own_client = client is not scheduler
    futures = []
    try:
        futures = client.map(
            run_item,
            items,
            store_path=str(fs.path),
            settings=settings,
            threads=threads_per_worker,
            pure=False,
            key=[f"featup-{it.name}-{os.getpid()}-{time.time_ns()}" for it in items],
        )
        names = {f.key: it.name for f, it in zip(futures, items)}
        for fut in as_completed(futures):
            name = names[fut.key]
            try:
                fut.result()
                yield Progress(0, 1, name, "image-done")
            except Exception as exc:  # noqa: BLE001 - a worker's error, reported per image
                yield Progress(0, 1, f"{name}: {type(exc).__name__}: {exc}", "image-failed")
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:  # cancelled: stop what has not started (running images are dropped)
            client.cancel(pending)
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


def extract_many(
    inputs: Any,
    store: str | os.PathLike,
    settings: ExtractSettings | None = None,
    *,
    progress: Callable[[Progress], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> FeatureStore:
    """Extract features of many images into one zarr store; returns the store.

    Parameters
    ----------
    inputs : path, array, list or dict
        As :func:`iter_extract_many`.
    store : str or os.PathLike
        The store's folder.
    settings : ExtractSettings, optional
        What to compute; or give its fields as keywords.
    progress : callable, optional
        Called with each :class:`~napari_featup.progress.Progress`.
    should_cancel : callable, optional
        Polled at every step; True stops the run (stored images are kept).
    **kwargs
        :func:`iter_extract_many`'s keywords (``workers``, ``scheduler``,
        ``overwrite``, ...) and :class:`~napari_featup.to_store.ExtractSettings` fields.

    Returns
    -------
    FeatureStore

    Raises
    ------
    BatchError
        After the run, when any image failed.
    Cancelled
        ``should_cancel`` returned True.
    """
    return drive(iter_extract_many(inputs, store, settings, **kwargs), progress, should_cancel)
