"""Checks the command line makes before extracting: the weights it needs are here or
reachable (else it fails at once, naming the flag to use), and a note of how long a
per-image fit will take (the memory/time estimate of :mod:`.cli_large` leaves fits out).
"""

from __future__ import annotations

import argparse
import sys


def check_weights_or_fail(args: argparse.Namespace, options: dict | None = None) -> None:
    """Fail at once, naming the flag to use, when needed weights are neither cached
    nor reachable (instead of after the hub's retries). ``options``: the upsampler's
    (they can pick its published checkpoint, e.g. JAFAR's ``checkpoint``)."""
    from .errors import WeightsUnavailableError
    from .session.availability import check_weights
    from .session.messages import weights_advice

    try:
        check_weights(
            args.backbone,
            args.weights,
            args.upsampler,
            args.upsampler_weights,
            args.use_norm,
            options,
        )
    except WeightsUnavailableError as exc:
        part = getattr(exc, "part", "backbone")
        raise WeightsUnavailableError(weights_advice(exc, part, "cli")) from exc


def print_fit_note(args: argparse.Namespace, shape: tuple[int, int], options: dict) -> None:
    """For upsamplers fitted to each image (which the memory/time estimate leaves
    out): how long the fit will take here, and on a CPU what the preview takes."""
    import torch

    from .session.estimate import estimate_run
    from .upsamplers import upsampler_info

    if not upsampler_info(args.upsampler).cls.fits_per_image or args.upsampler != "featup-implicit":
        return
    est = estimate_run(
        args.backbone,
        args.upsampler,
        shape,
        device=args.device,
        options=options,
        threads=torch.get_num_threads(),
        flag="--upsampler-option settings=preview",
    )
    print(f"note: {args.upsampler} fits to each image: {est.text()}", file=sys.stderr)
