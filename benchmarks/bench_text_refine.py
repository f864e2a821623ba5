"""How long the Text row's exact maps take to replace the fast ones (issue 14).

On a ``--size``² image (clip backbone, random weights, ``--upsampler``, as the dock's
run makes it), Enter shows 1 and 3 prompts' fast maps (``StackText.build`` +
``update``, from the compact field), then the background refinement computes their
exact maps (:func:`napari_featup.text.refine.exact_maps`: ``FeatureField.query_similarity``
on the full-resolution field, the library's and the CLI's path) and writes them over
(``apply_refinement``). Printed: the fast time, the refinement's time (what "exact maps
typically after X s" means), and the fast maps' largest difference from the exact ones.
The prompts use the plain templates: a map's cost does not depend on them.

Usage: python benchmarks/bench_text_refine.py [--size 1024] [--upsampler featup-jbu]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from _harness import header, set_threads
from bench_text import PROMPTS, _features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--upsampler", default="featup-jbu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    from napari_featup.text import StackText, load_text_encoder
    from napari_featup.text.refine import apply_refinement, exact_maps, plan_refinement

    print(header("bench_text_refine: Enter -> fast maps -> exact maps"))
    encoder = load_text_encoder("clip", "random")
    stack, t_run = _features(args.size, args.upsampler)
    encoder.encode(PROMPTS, "plain")
    StackText.build(stack, PROMPTS[:1], encoder, "plain").update(())  # kernels, norms
    for n in (1, 3):
        t0 = time.perf_counter()
        text = StackText.build(stack, PROMPTS[:n], encoder, "plain")
        fast = text.update(()).copy()
        t_fast = time.perf_counter() - t0
        ref = plan_refinement(text)
        t0 = time.perf_counter()
        maps = exact_maps(ref)
        assert apply_refinement(ref, maps)
        t_exact = time.perf_counter() - t0
        row = {
            "upsampler": args.upsampler,
            "image": f"{args.size}x{args.size}",
            "prompts": n,
            "run_s": round(t_run, 1),
            "fast_ms": round(1000 * t_fast, 1),
            "refine_s": round(t_exact, 2),
            "fast_max_abs_err": float(f"{np.abs(fast - maps).max():.2e}"),
            "load_1min": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
