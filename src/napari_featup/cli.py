"""The ``napari-featup`` command: extract, train-jbu, download, demo, list.

Exit codes: 0 success, 1 unexpected error (including an output that cannot be written),
2 bad arguments or unknown names, 3 a missing or unreadable input file, 4 weights
unavailable (offline), 5 output exists, 6 refused: the run's estimated memory exceeds
what is available (``--yes`` runs it), 130 interrupted.

:func:`main` returns the code and never raises for bad input: argparse's usage errors
(which argparse signals with ``SystemExit(2)``) are returned as 2 and ``--help`` as 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import FeatUpError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INPUT, EXIT_WEIGHTS, EXIT_EXISTS = 0, 1, 2, 3, 4, 5
EXIT_MEMORY = 6


class CLIError(FeatUpError):
    """A command-line problem (bad argument, missing file) with its exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def read_image(path: str | Path):
    """Read an image file into a numpy array (TIFF via tifffile, .npy, others via imageio)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"image file {str(path)!r} does not exist", EXIT_INPUT)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as exc:  # noqa: BLE001 - every reader fails in its own way
        raise CLIError(
            f"cannot read {str(path)!r} as an image ({type(exc).__name__}: {exc}); "
            "supported: TIFF, PNG, JPEG and other formats imageio reads, and .npy",
            EXIT_INPUT,
        ) from exc


def _out_paths(images: Sequence[str], out: str, fmt: str | None) -> list[Path]:
    from .io import FEATUP_SUFFIX, FORMATS, featup_path

    out_path = Path(out)
    suffix = out_path.suffix.lower()
    if len(images) == 1 and suffix in FORMATS:
        return [out_path]
    if suffix in FORMATS:
        raise CLIError(
            f"{len(images)} images need --out to be a folder, not the file {out!r}", EXIT_USAGE
        )
    if suffix and not out_path.is_dir():
        # "x.png" is a typo for a feature file far more often than a folder's name
        example = featup_path(out_path.with_suffix(".npz")).name
        raise CLIError(
            f"--out {out!r}: {suffix} is not a feature-file format. Give a file ending in "
            f"{', '.join(FORMATS)} (e.g. {example}), or for a folder a name without an "
            "extension (an existing folder is used as it is)",
            EXIT_USAGE,
        )
    ext = "." + (fmt or "npz").lstrip(".")
    if ext not in FORMATS:
        raise CLIError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", EXIT_USAGE)
    if out_path.exists() and not out_path.is_dir():
        raise CLIError(
            f"--out {out!r} is an existing file; without a feature-file extension "
            f"({', '.join(FORMATS)}) --out names a folder",
            EXIT_USAGE,
        )
    out_path.mkdir(parents=True, exist_ok=True)
    return [out_path / f"{Path(p).stem}{FEATUP_SUFFIX}{ext}" for p in images]


def _cmd_extract(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .cli_checks import check_weights_or_fail, print_fit_note
    from .cli_large import check_estimate, cmd_extract_store, plane_shape, scale_kwargs
    from .errors import WeightsUnavailableError
    from .io import featup_path, save_features
    from .pipeline import iter_extract
    from .progress import drive
    from .session.messages import weights_advice
    from .upsamplers import parse_options

    options = parse_options(args.upsampler_option)
    if args.store:
        return cmd_extract_store(args, options)
    if not args.out:
        raise CLIError(
            "extract needs --out FILE_OR_FOLDER (feature files) or --store STORE.zarr", EXIT_USAGE
        )
    outs = _out_paths(args.images, args.out, args.format)
    if args.text:
        _check_text(args, outs)
    if not args.overwrite:
        for o in outs:
            if o.exists():
                raise CLIError(f"{str(o)!r} exists; pass --overwrite to replace it", EXIT_EXISTS)
    check_weights_or_fail(args, options)
    stage = {"now": "backbone"}  # of the latest progress event: whose weights failed
    for image_path, out in zip(args.images, outs):
        image = read_image(image_path)
        shape = plane_shape(image, args.channel_axis)
        highres = not args.no_highres
        if not args.quiet:
            print_fit_note(args, shape, options)
        if not args.no_estimate and check_estimate(
            args, shape, options, to_store=False, highres=highres
        ):
            continue
        gen = iter_extract(
            image,
            args.backbone,
            args.upsampler,
            weights=args.weights,
            device=args.device,
            precision=args.precision,
            use_norm=args.use_norm,
            upsampler_weights=args.upsampler_weights,
            upsampler_options=options,
            highres=not args.no_highres,
            highres_dtype=args.highres_dtype,
            channel_axis=args.channel_axis,
            channels=args.channels,
            scaling=args.scaling,
            contrast_limits=args.contrast_limits,
            **scale_kwargs(args),
        )
        with tqdm(total=None, desc=Path(image_path).name, unit="step", disable=args.quiet) as bar:

            def show(ev) -> None:
                stage["now"] = ev.stage
                bar.total, bar.n = ev.total, ev.step
                bar.set_postfix_str(ev.message)
                bar.refresh()

            try:
                result = drive(gen, show)
            except WeightsUnavailableError as exc:  # say which flag sets those weights
                raise WeightsUnavailableError(weights_advice(exc, stage["now"], "cli")) from exc
        if args.pca:
            result.fit_pca()
        extra = None
        if args.text:
            from .text import TEXT_KEY, text_outputs

            extra, result.metadata[TEXT_KEY] = text_outputs(
                result,
                args.text,
                args.text_templates,
                args.text_threshold,
                result.metadata["device"],
            )
        save_features(out, result, overwrite=args.overwrite, extra_arrays=extra)
        if result.metadata.get("random_weights"):
            print("note: features from RANDOM (untrained) backbone weights", file=sys.stderr)
        if ".featup" not in out.suffixes and not args.quiet:
            print(
                f"note: napari opens {out.name} as a plain array; name it "
                f"{featup_path(out).name} to open it with FeatUp (PCA layers)",
                file=sys.stderr,
            )
        print(f"{image_path} -> {out}")
    return EXIT_OK


def _check_text(args: argparse.Namespace, outs: list[Path]) -> None:
    """Fail before any work when --text cannot be honoured."""
    from .text.encoder import tower_spec

    tower_spec(args.backbone)  # BackboneError (exit 2) for backbones without a text tower
    if any(o.suffix.lower() == ".npy" for o in outs):
        raise CLIError(
            "--text writes heatmaps beside the features: use an .npz, .zarr or .tif output "
            "(a .npy file holds one array)",
            EXIT_USAGE,
        )


def _cmd_download(args: argparse.Namespace) -> int:
    from .backbones import download_backbone, get_spec, list_backbones
    from .text import download_text_tower, has_text_tower
    from .upsamplers.featup_jbu import FEATUP_CHECKPOINTS, download_featup_checkpoint

    names = args.backbones or list_backbones()
    for name in names:
        get_spec(name)  # unknown names fail before anything is fetched
    for name in names:
        timm_name = download_backbone(name)
        print(f"backbone {name}: {timm_name} cached")
        if has_text_tower(name):
            print(f"text tower {name}: {download_text_tower(name)}")
        if args.no_jbu:
            continue
        for use_norm in FEATUP_CHECKPOINTS.get(name, ()):
            path = download_featup_checkpoint(name, use_norm)
            print(f"featup-jbu {name} ({'norm' if use_norm else 'no_norm'}): {path}")
    if not args.no_learned:
        from .upsamplers import anyup, jafar

        for label, path in anyup.download_weights() + jafar.download_weights(names):
            print(f"{label}: {path}")
    return EXIT_OK


def _cmd_list(args: argparse.Namespace) -> int:
    from .backbones import describe_backbones
    from .text import has_text_tower
    from .upsamplers import describe_upsamplers, upsampler_info, upsampler_options

    infos = describe_backbones()
    wn = max(map(len, infos))
    print("backbones (jbu: the FeatUp JBU stacks published for it; '-': train your own):")
    for group, title in (("featup", "FeatUp's six"), ("modern", "modern")):
        print(f" {title}:")
        for name, i in ((n, i) for n, i in infos.items() if i["group"] == group):
            jbu = "+".join("norm" if v else "no_norm" for v in i["featup_jbu"]) or "-"
            text = " (text queries)" if has_text_tower(name) else ""
            print(f"  {name:<{wn}} {i['dim']:>5}-d  stride {i['stride']:<3} jbu {jbu:<13}", end="")
            print(f"{i['description']}{text}")
    print(" custom: timm:<model name> or timm:hf-hub:<repository>: any timm model (jbu -)")
    print("upsamplers:")
    for name, desc in describe_upsamplers().items():
        print(f"  {name:<16} {desc}")
        opts = upsampler_options(name)
        if opts:
            shown = " ".join(f"{k}={v}" for k, v in opts.items())
            print(f"  {'':<16} options (--upsampler-option KEY=VALUE): {shown}")
        info = upsampler_info(name)
        if info.licence or info.citation:
            print(f"  {'':<16} licence {info.licence or '-'}; cite: {info.citation or '-'}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    run_demo(sample=args.sample, weights=args.weights)
    return EXIT_OK


def _backbone_name(name: str) -> str:
    """argparse type: a registered backbone or timm:MODEL (a usage error otherwise)."""
    from .backbones import is_backbone_name

    if not is_backbone_name(name):
        raise argparse.ArgumentTypeError(f"unknown backbone {name!r} (see `napari-featup list`)")
    return name


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-featup`` argument parser (subcommands extract, download, list, demo ...)."""
    from .backbones import list_backbones
    from .preprocess import SCALINGS
    from .upsamplers import list_upsamplers

    parser = argparse.ArgumentParser(
        prog="napari-featup",
        description="Extract, upsample and inspect vision-backbone features.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("extract", help="extract features of image files to feature files")
    ex.add_argument(
        "images",
        nargs="+",
        help="image files (TIFF, PNG, JPEG, .npy, ...); with --store also folders, globs, "
        "zarr/OME-Zarr and stacks",
    )
    ex.add_argument(
        "--backbone",
        "-b",
        default="dinov2",
        type=_backbone_name,
        help=f"one of {', '.join(list_backbones())}, or timm:MODEL (any timm model)",
    )
    ex.add_argument("--upsampler", "-u", default="bilinear", choices=list_upsamplers())
    ex.add_argument(
        "--weights",
        default="pretrained",
        help="backbone weights: pretrained, random (untrained) or a file path",
    )
    ex.add_argument(
        "--upsampler-weights",
        default=None,
        help="upsampler weights file (e.g. a FeatUp .ckpt), or random (untrained); "
        "default: the upsampler's published weights where it has them (cached)",
    )
    ex.add_argument(
        "--upsampler-option",
        action="append",
        metavar="KEY=VALUE",
        help="an upsampler option, repeatable (e.g. steps=40 for featup-implicit, "
        "sigma_range=0.1 for jbu-classic)",
    )
    ex.add_argument(
        "--use-norm",
        dest="use_norm",
        action="store_true",
        default=None,
        help="apply FeatUp's channel LayerNorm before upsampling",
    )
    ex.add_argument("--no-norm", dest="use_norm", action="store_false")
    ex.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ex.add_argument("--precision", default="float32", choices=["float32", "float16", "bfloat16"])
    ex.add_argument("--scaling", default="auto", choices=list(SCALINGS))
    ex.add_argument("--contrast-limits", nargs=2, type=float, metavar=("LOW", "HIGH"))
    ex.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        help="axis holding channels of a multichannel image",
    )
    ex.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=None,
        help="source channels for R G B (1 or 3 indices)",
    )
    ex.add_argument("--no-highres", action="store_true", help="save only the low-res grid")
    ex.add_argument("--highres-dtype", default="float32", choices=["float32", "float16"])
    ex.add_argument("--pca", action="store_true", help="also fit and save a 3-component PCA")
    ex.add_argument(
        "--text",
        action="append",
        metavar="PROMPT",
        help="a text prompt, repeatable (CLIP-family backbones): saves its heatmap "
        "(text_similarity) and the label map over all prompts (text_labels) with the features",
    )
    ex.add_argument(
        "--text-templates",
        default="maskclip",
        choices=["maskclip", "imagenet", "plain"],
        help="prompt templates averaged per prompt (plain: the prompt as typed)",
    )
    ex.add_argument(
        "--text-threshold",
        type=float,
        default=None,
        metavar="COSINE",
        help="label map: pixels whose best similarity is below this are 'none of these' (0)",
    )
    ex.add_argument(
        "--out",
        "-o",
        default=None,
        help="output file (.npz, .zarr, .tif, .npy; name it x.featup.npz so napari opens "
        "it with FeatUp) or, for several images, a folder (files <image>.featup.npz)",
    )
    from .cli_large import add_scale_arguments

    add_scale_arguments(ex)
    ex.add_argument("--format", default=None, help="file format when --out is a folder (npz)")
    ex.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ex.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ex.set_defaults(func=_cmd_extract)

    from .cli_train import add_train_parser

    add_train_parser(sub)

    dl = sub.add_parser("download", help="fetch pretrained weights ahead of going offline")
    dl.add_argument(
        "backbones",
        nargs="*",
        metavar="BACKBONE",
        help=f"backbones to fetch (default: all of {', '.join(list_backbones())})",
    )
    dl.add_argument(
        "--no-jbu",
        action="store_true",
        help="skip FeatUp's JBU checkpoints (fetched by default where published)",
    )
    dl.add_argument(
        "--no-learned",
        action="store_true",
        help="skip AnyUp's checkpoints and JAFAR's for the backbones (fetched by default)",
    )
    dl.set_defaults(func=_cmd_download)

    ls = sub.add_parser("list", help="list backbones and upsamplers")
    ls.set_defaults(func=_cmd_list)

    demo = sub.add_parser("demo", help="open napari with a sample image and the FeatUp widget")
    demo.add_argument(
        "--sample", default="astronaut", choices=["astronaut", "ihc", "cell"], help="sample image"
    )
    demo.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "pretrained", "random"],
        help="auto: pretrained if cached, else random (flagged)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception, by its type (see the module docstring)."""
    from .errors import (
        BackboneError,
        FeatUpError,
        FeatureFileError,
        ImageError,
        SettingsError,
        UpsamplerError,
        WeightsFileError,
        WeightsUnavailableError,
    )
    from .progress import Cancelled

    table: list[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = [
        (CLIError, getattr(exc, "code", EXIT_ERROR)),
        ((Cancelled, KeyboardInterrupt), 130),
        (WeightsUnavailableError, EXIT_WEIGHTS),
        (FileExistsError, EXIT_EXISTS),
        ((ImageError, WeightsFileError), EXIT_INPUT),
        ((BackboneError, UpsamplerError, FeatureFileError, SettingsError), EXIT_USAGE),
        (FeatUpError, EXIT_ERROR),
    ]
    for kinds, code in table:
        if isinstance(exc, kinds):
            return code
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see the module docstring)."""
    from .errors import FeatUpError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # argparse has printed the usage error (or --help): return its status (2 or 0)
        # instead of raising, so callers always get a code; the console script exits with it.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("napari-featup: interrupted", file=sys.stderr)
        return 130
    except (FeatUpError, CLIError, OSError) as exc:
        # OSError: an output that cannot be written (permissions, a full disk, a file
        # where a folder should be) is reported, not shown as a traceback.
        print(f"napari-featup: error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
