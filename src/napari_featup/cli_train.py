"""``napari-featup train-jbu``: train a FeatUp JBU stack on image files (the trainer is
:func:`~napari_featup.upsamplers.featup_jbu.train.iter_train_jbu`; docs/train-jbu.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import EXIT_EXISTS, EXIT_OK, CLIError


def cmd_train_jbu(args: argparse.Namespace) -> int:
    """``napari-featup train-jbu``: train, with a progress bar showing the loss."""
    from tqdm.auto import tqdm

    from .progress import drive
    from .upsamplers.featup_jbu.train import iter_train_jbu

    out = Path(args.out)
    if out.exists() and not args.overwrite and args.resume is None:
        raise CLIError(f"{str(out)!r} exists; pass --overwrite to replace it", EXIT_EXISTS)
    options = {
        k: v
        for k, v in {
            "batch_size": args.batch_size,
            "n_jitters": args.jitters,
            "size": args.size,
            "lr": args.lr,
            "seed": args.seed,
            "checkpoint_every": args.checkpoint_every,
            "crop": args.crop,
        }.items()
        if v is not None
    }
    gen = iter_train_jbu(
        args.images,
        args.backbone,
        steps=args.steps,
        out=out,
        checkpoint=args.checkpoint,
        resume=args.resume,
        init=args.from_checkpoint,
        use_norm=args.use_norm,
        device=args.device,
        backbone_weights=args.weights,
        **options,
    )
    with tqdm(total=args.steps, desc="train-jbu", unit="step", disable=args.quiet) as bar:

        def show(ev) -> None:
            bar.n = ev.done
            if ev.loss is not None and ev.loss == ev.loss:  # not NaN
                bar.set_postfix_str(f"loss {ev.loss:.4g}")
            else:
                bar.set_postfix_str(ev.message)
            bar.refresh()

        up = drive(gen, show)
    if str(up.info.get("backbone_weights")) == "random":
        print("note: trained on features of a RANDOM (untrained) backbone", file=sys.stderr)
    print(f"{len(up.info['loss_curve'])} steps, final loss {up.info['loss_curve'][-1]:.4g} -> {out}"
          if up.info["loss_curve"] else f"no steps run -> {out}")  # fmt: skip
    return EXIT_OK


def add_train_parser(sub) -> None:
    """Add the ``train-jbu`` subcommand to the ``napari-featup`` subparsers."""
    tr = sub.add_parser(
        "train-jbu",
        help="train a FeatUp JBU stack for a backbone on your images (FeatUp's objective)",
    )
    tr.add_argument("images", nargs="+", help="image files, folders or globs")
    tr.add_argument("--backbone", "-b", default="dinov2", help="a backbone name")
    tr.add_argument(
        "--weights", default="pretrained", help="backbone weights: pretrained, random or a file"
    )
    tr.add_argument("--steps", type=int, default=500, help="optimiser steps (batches)")
    tr.add_argument("--out", "-o", required=True, help="checkpoint to write (FeatUp's .ckpt)")
    tr.add_argument("--resume", default=None, help="continue from this run's checkpoint")
    tr.add_argument("--from-checkpoint", default=None, help="fine-tune this FeatUp JBU checkpoint")
    tr.add_argument(
        "--checkpoint",
        default=None,
        help="resumable checkpoint written every --checkpoint-every steps and on Ctrl-C "
        "(default: OUT.partial)",
    )
    tr.add_argument("--checkpoint-every", type=int, default=None, help="default 100")
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    tr.add_argument("--batch-size", type=int, default=None, help="images per step (4)")
    tr.add_argument("--jitters", type=int, default=None, help="jittered views per image (5)")
    tr.add_argument("--size", type=int, default=None, help="crop side in px (224)")
    tr.add_argument("--lr", type=float, default=None, help="NAdam learning rate (1e-3)")
    tr.add_argument("--seed", type=int, default=None, help="seed (0)")
    tr.add_argument("--crop", choices=["random", "center"], default=None)
    tr.add_argument("--no-norm", dest="use_norm", action="store_false", default=True,
                    help="train without FeatUp's channel LayerNorm")  # fmt: skip
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    tr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    tr.set_defaults(func=cmd_train_jbu)
