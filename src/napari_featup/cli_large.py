"""The command line's large-image part: working scale and tiling options, the feature
store (``extract --store``), dask clusters (``--workers``, ``--scheduler``) and the
pre-run estimate with its refusal past the available memory (exit code 6, ``--yes``).

Kept apart from :mod:`napari_featup.cli` so each module stays about one thing;
:func:`add_scale_arguments` adds the options to ``extract``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import EXIT_ERROR, EXIT_INPUT, EXIT_MEMORY, EXIT_OK, EXIT_USAGE, CLIError


def add_scale_arguments(ex: argparse.ArgumentParser) -> None:
    """Working scale, tiling, the feature store, the cluster and the estimate."""
    g = ex.add_argument_group("scale and large images (docs/large-images.md)")
    g.add_argument(
        "--downsample",
        type=float,
        default=None,
        metavar="K",
        help="compute features at 1/K of the resolution (K x patch px per cell)",
    )
    g.add_argument(
        "--pixels-per-patch",
        type=int,
        default=None,
        metavar="S",
        help="image pixels per feature cell (instead of --downsample)",
    )
    g.add_argument(
        "--tile-size",
        default="auto",
        metavar="PX",
        help="backbone input tile in working px: auto (the backbone's native "
        "size: 518 for dinov2, 224 for FeatUp's ViTs) or none (whole image at once)",
    )
    g.add_argument(
        "--tile-overlap",
        type=float,
        default=0.25,
        metavar="F",
        help="overlap of neighbouring tiles, a fraction of a tile (0.25)",
    )
    g.add_argument(
        "--store",
        default=None,
        metavar="STORE.zarr",
        help="write one zarr feature store (one group per image, resumable: "
        "current images are skipped) instead of feature files; IMAGES may then be "
        "folders, globs, stacks and OME-Zarr",
    )
    g.add_argument(
        "--features-dtype",
        default="float16",
        choices=["float16", "float32"],
        help="dtype of the stored feature grid (--store)",
    )
    g.add_argument(
        "--pca-colours",
        default="full",
        choices=["full", "lowres", "none"],
        help="PCA colours to store: full resolution and grid, grid only, or none",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run on a local dask cluster of N worker processes (--store)",
    )
    g.add_argument("--threads-per-worker", type=int, default=1, metavar="N")
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing dask cluster (e.g. tcp://host:8786, from "
        "dask-jobqueue on SLURM); workers must see the store's folder",
    )
    g.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="run even when the estimate exceeds the available memory or time",
    )
    g.add_argument(
        "--estimate",
        action="store_true",
        help="print the memory and time estimate in detail and exit",
    )
    g.add_argument(
        "--no-estimate",
        action="store_true",
        help="skip the estimate (and its one-tile calibration)",
    )


def scale_kwargs(args: argparse.Namespace) -> dict:
    """Working scale and tiling options as iter_extract / ExtractSettings keywords."""
    tile = args.tile_size
    if isinstance(tile, str) and tile.lower() in ("none", "0", "off"):
        tile = None
    elif isinstance(tile, str) and tile.lower() != "auto":
        try:
            tile = int(tile)
        except ValueError:
            raise CLIError(
                f"--tile-size must be auto, none or pixels, got {tile!r}", EXIT_USAGE
            ) from None
    return dict(
        downsample=args.downsample,
        pixels_per_patch=args.pixels_per_patch,
        tile_size=tile,
        tile_overlap=args.tile_overlap,
    )


def plane_shape(image, channel_axis: int | None) -> tuple[int, int]:
    """(H, W) of one plane of ``image`` (array, dask or zarr), read lazily."""
    from .source import as_source

    return as_source(image, channel_axis=channel_axis).shape


def check_estimate(
    args: argparse.Namespace,
    shape: tuple[int, int],
    options: dict,
    *,
    to_store: bool,
    highres: bool = False,
    calibrate: bool = True,
) -> bool:
    """Print the run's estimate; refuse (or, at a terminal, ask) when it exceeds the
    available memory (or, at a terminal, takes long), unless --yes. True: stop here
    (--estimate asked only for the estimate)."""
    from .backbones import load_backbone
    from .estimate import estimate_run

    kwargs = dict(
        to_store=to_store,
        highres=highres,
        highres_dtype=args.highres_dtype,
        pca=getattr(args, "pca_colours", "full"),
        device=args.device,
        **scale_kwargs(args),
    )
    est = estimate_run(shape, args.backbone, args.upsampler, calibrate=False, **kwargs)
    if est.n_tiles <= 1 and not est.exceeds_memory and not args.estimate:
        return False  # a small image: nothing worth saying, no calibration to pay for
    if calibrate:  # time one tile of the model the run will use (loaded once, cached)
        bb = load_backbone(args.backbone, args.weights, args.device, args.precision)
        est = estimate_run(shape, bb, args.upsampler, calibrate=True, **kwargs)
    print(f"estimate for {shape[0]} x {shape[1]} px: {est.summary()}", file=sys.stderr)
    if args.estimate:
        print(est.details(), file=sys.stderr)
        return True
    if args.yes or not (est.exceeds_memory or est.long):
        return False
    why = "needs more memory than is available" if est.exceeds_memory else "will take long"
    if sys.stdin is not None and sys.stdin.isatty():
        answer = input(f"napari-featup: this run {why}; continue? [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return False
        raise CLIError("not started (declined)", EXIT_MEMORY)
    if est.exceeds_memory:
        raise CLIError(
            f"not started: the run {why} ({est.summary()}). Lower it with --downsample, "
            "--no-highres or --store, or pass --yes to run anyway",
            EXIT_MEMORY,
        )
    return False


def cmd_extract_store(args: argparse.Namespace, options: dict) -> int:
    """``extract --store``: many images into one resumable zarr store; returns the exit code."""
    from tqdm.auto import tqdm

    from .batch import BatchError, expand_inputs, iter_extract_many
    from .progress import drive
    from .to_store import ExtractSettings

    settings = ExtractSettings(
        backbone=args.backbone,
        upsampler=args.upsampler,
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        use_norm=args.use_norm,
        upsampler_weights=args.upsampler_weights,
        upsampler_options=options,
        channel_axis=args.channel_axis,
        channels=args.channels,
        scaling=args.scaling,
        contrast_limits=args.contrast_limits,
        features_dtype=args.features_dtype,
        pca=args.pca_colours,
        **scale_kwargs(args),
    )
    try:
        items = expand_inputs(list(args.images), settings)
    except FileNotFoundError as exc:
        raise CLIError(str(exc), EXIT_INPUT) from exc
    if not args.no_estimate:
        biggest = max((it.source(settings).shape for it in items), key=lambda hw: hw[0] * hw[1])
        if check_estimate(args, biggest, options, to_store=True, calibrate=args.scheduler is None):
            return EXIT_OK
    gen = iter_extract_many(
        list(args.images),
        args.store,
        settings,
        workers=args.workers,
        scheduler=args.scheduler,
        threads_per_worker=args.threads_per_worker,
        overwrite=args.overwrite,
    )
    with tqdm(total=None, desc=Path(args.store).name, unit="image", disable=args.quiet) as bar:

        def show(ev) -> None:
            bar.total, bar.n = ev.total, round(ev.done, 2)
            bar.set_postfix_str(ev.message[:60])
            bar.refresh()

        try:
            store = drive(gen, show)
        except BatchError as exc:
            store = exc.store
            print(f"napari-featup: {exc}", file=sys.stderr)
    rep = store.report
    print(
        f"{args.store}: {len(rep.computed)} computed, {len(rep.skipped)} up to date (skipped), "
        f"{len(rep.failed)} failed, {rep.seconds:.1f} s"
    )
    if settings.weights == "random":
        print("note: features from RANDOM (untrained) backbone weights", file=sys.stderr)
    return EXIT_ERROR if rep.failed else EXIT_OK
