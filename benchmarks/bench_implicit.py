"""Loss vs wall time of the implicit upsampler: FeatUp's settings against "fast".

Fits FeatUp's implicit model to one fixed image (skimage's astronaut, resized to
``--size`` px square) with a RANDOM-WEIGHT dinov2 backbone (no pretrained weights on
this machine: the figures measure optimisation speed, not feature quality), once with
the ``featup`` settings and once with ``fast``, and prints:

* the held-out loss curve of each run against wall time: FeatUp's full objective in
  eval mode (no dropout) on ``--eval-views`` jittered views never used for training,
  each run scored with its own downsampler, uncertainty net and PCA basis; the clock
  is stopped while scoring;
* the time each run needs to reach the ``featup`` run's loss level (the mean of its last
  ``--target-evals`` evaluations: one snapshot wobbles), and the speed-up of ``fast``.

The timed part of each run includes featurising its jittered views with the backbone
(FeatUp's 3000 views dominate on CPU) and all steps. A full FeatUp run (3000 views,
1200 steps) takes about 45 min on one core of the 2-core development CPU;
``--featup-views`` / ``--featup-steps`` shorten it (the printout says which budget was
used), and ``--out`` saves its curve so that ``--reference`` can reuse it for runs of
other fast settings against the same held-out views.

    python benchmarks/bench_implicit.py --threads 1 --out featup.json     # FeatUp's defaults
    python benchmarks/bench_implicit.py --threads 1 --reference featup.json --retime-reference 32
    python benchmarks/bench_implicit.py --device cuda

``--featup-loop N`` also times N steps of FeatUp's own training loop (rebuilt with the
same operations in benchmarks/featup_loop.py; FeatUp is not installable here) and
reports the speed-up against FeatUp as released, beside the one against FeatUp's
settings run by this package's (faster) fitter.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np
import torch
from _harness import header

from napari_featup import load_backbone
from napari_featup.upsamplers.implicit import ImplicitFitter, resolve_config
from napari_featup.upsamplers.implicit.fit import as_image_tensor


def test_image(size: int) -> np.ndarray:
    try:
        from skimage import data
        from skimage.transform import resize

        img = data.astronaut()
        return (resize(img, (size, size), anti_aliasing=True) * 255).astype(np.uint8)
    except Exception:  # noqa: BLE001 - fall back to a synthetic scene
        yy, xx = np.mgrid[0:size, 0:size] / size
        img = np.stack([np.sin(9 * xx) > 0, (yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.08, yy], -1)
        return (img * 255).astype(np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(name, cfg, x, bb, seed, eval_jit, eval_raw, eval_every, time_limit, log):
    dev = bb.device
    fitter = ImplicitFitter(x, bb, cfg, seed=seed)
    curve = []
    elapsed = 0.0
    t0 = time.perf_counter()
    for _ in fitter.iter_views():
        pass
    fitter.build()
    sync(dev)
    elapsed += time.perf_counter() - t0
    view_s = elapsed

    def score(step):
        ev = fitter.evaluate(eval_jit, eval_raw)
        row = {
            "step": step,
            "seconds": round(elapsed, 2),
            "loss": ev["loss"],
            "rec": ev["rec"],
            "mse": ev["mse"],
            "train_loss": fitter.losses[-1] if fitter.losses else None,
        }
        curve.append(row)
        log(
            f"  {name:>8} step {step:5d}  t={elapsed:8.1f}s  held-out loss {ev['loss']:.4f}  "
            f"rec {ev['rec']:.4f}  mse {ev['mse']:.4f}"
        )

    score(0)
    for i in range(cfg.steps):
        t0 = time.perf_counter()
        fitter.step()
        sync(dev)
        elapsed += time.perf_counter() - t0
        if (i + 1) % eval_every == 0 or i + 1 == cfg.steps:
            score(i + 1)
        if time_limit and elapsed > time_limit:
            log(f"  {name}: stopped at the time limit ({time_limit} s) after {i + 1} steps")
            if curve[-1]["step"] != i + 1:
                score(i + 1)
            break
    return {"name": name, "config": cfg.to_dict(), "view_seconds": round(view_s, 2), "curve": curve}


def retime(base_run, cfg, x, bb, seed, n):
    """The reference curve on a clock measured now: its loss at each step is kept (the
    same arithmetic gives the same losses), its time becomes views x (seconds per view)
    + steps x (seconds per step), both timed here on ``n`` views and ``n`` steps of the
    same settings. For a reference recorded under other load or by older code."""
    fitter = ImplicitFitter(x, bb, replace(cfg, views=n), seed=seed)
    t0 = time.perf_counter()
    for _ in fitter.iter_views():
        pass
    fitter.build()
    per_view = (time.perf_counter() - t0) / n
    fitter.step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        fitter.step()
    per_step = (time.perf_counter() - t0) / n
    views = base_run["config"]["views"]
    print(
        f"reference retimed here: {per_view:.3f} s per view, {per_step:.2f} s per step "
        f"(measured on {n} of each); recorded: views in {base_run['view_seconds']:.1f} s, "
        f"{base_run['curve'][-1]['seconds']:.1f} s in all"
    )
    curve = [
        dict(
            row,
            seconds=round(views * per_view + row["step"] * per_step, 2),
            recorded_seconds=row["seconds"],
        )
        for row in base_run["curve"]
    ]
    return dict(
        base_run,
        curve=curve,
        view_seconds=round(views * per_view, 2),
        retimed={"per_view": per_view, "per_step": per_step, "n": n},
    )


def time_to(curve, level):
    for row in curve:
        if row["loss"] <= level:
            return row["seconds"], row["step"]
    return None, None


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--backbone", default="dinov2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--featup-views", type=int, default=3000)
    ap.add_argument("--featup-steps", type=int, default=1200)
    ap.add_argument(
        "--featup-time-limit",
        type=float,
        default=0,
        help="stop the featup run after this many timed seconds (0: none)",
    )
    ap.add_argument("--fast-steps", type=int, default=None)
    ap.add_argument("--fast-views", type=int, default=None)
    ap.add_argument("--fast-json", default=None, help="JSON dict of extra fast-setting overrides")
    ap.add_argument(
        "--fast-from",
        default=None,
        help="JSON from an earlier --out: reuse its fast curve (same settings), not rerun it",
    )
    ap.add_argument(
        "--retime-reference",
        type=int,
        default=0,
        metavar="N",
        help="with --reference: put its curve on a clock timed here on N views and N steps",
    )
    ap.add_argument(
        "--featup-loop",
        type=int,
        default=0,
        metavar="N",
        help="also time N steps of FeatUp's own training loop "
        "(benchmarks/featup_loop.py) and put the featup curve on that clock too",
    )
    ap.add_argument(
        "--target-evals",
        type=int,
        default=4,
        help="the target is the mean held-out loss of the featup run's last K evaluations",
    )
    ap.add_argument("--eval-views", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--fast-eval-every", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the curves as JSON here")
    ap.add_argument(
        "--reference",
        default=None,
        help="JSON from an earlier --out: reuse its featup curve instead of rerunning it "
        "(same image, size, backbone, seed and held-out views)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(header("bench_implicit: held-out loss vs time, featup against fast", device=str(dev)))
    bb = load_backbone(args.backbone, weights="random", device=dev)
    x = as_image_tensor(test_image(args.size))
    print(
        f"image: astronaut {args.size}x{args.size}; backbone {args.backbone} with RANDOM weights "
        f"(no pretrained weights here); device {dev}; torch threads {torch.get_num_threads()}; "
        f"cpus {os.cpu_count()}"
    )

    featup = resolve_config("featup", views=args.featup_views, steps=args.featup_steps)
    fast_over = json.loads(args.fast_json) if args.fast_json else {}
    fast = resolve_config("fast", views=args.fast_views, steps=args.fast_steps, **fast_over)
    reduced = (featup.views, featup.steps) != (3000, 1200) or args.featup_time_limit
    print(
        f"featup settings: views={featup.views} steps={featup.steps} "
        f"batch={featup.batch} lr={featup.lr}"
        + (
            "  (REDUCED budget; FeatUp's own: 3000 views, 1200 steps)"
            if reduced
            else "  (FeatUp's defaults)"
        )
    )
    print(
        "fast settings:   "
        + ", ".join(
            f"{k}={v}"
            for k, v in fast.to_dict().items()
            if v != featup.to_dict()[k] or k in ("views", "steps")
        )
    )

    # held-out views: their own seed, featurised once, outside the timing
    probe = ImplicitFitter(x, bb, featup, seed=10_000 + args.seed)
    eval_jit = probe.make_jitters(args.eval_views)
    eval_raw = torch.cat(
        [probe.view_features(eval_jit[a : a + 8]) for a in range(0, len(eval_jit), 8)]
    )

    if args.reference:
        with open(args.reference) as fh:
            ref = json.load(fh)
        for k in ("size", "backbone", "seed", "eval_views"):
            if ref["args"][k] != getattr(args, k):
                raise SystemExit(
                    f"--reference was made with {k}={ref['args'][k]!r}, not {getattr(args, k)!r}"
                )
        base_run = ref["results"][0]
        print(
            f"featup curve reused from {args.reference}: views={base_run['config']['views']} "
            f"steps={base_run['config']['steps']}"
        )
        if args.retime_reference:
            base_run = retime(base_run, featup, x, bb, args.seed, args.retime_reference)
        for row in base_run["curve"]:
            print(
                f"  {'featup':>8} step {row['step']:5d}  t={row['seconds']:8.1f}s  "
                f"held-out loss {row['loss']:.4f}  rec {row['rec']:.4f}  mse {row['mse']:.4f}"
            )
    else:
        base_run = run(
            "featup",
            featup,
            x,
            bb,
            args.seed,
            eval_jit,
            eval_raw,
            args.eval_every,
            args.featup_time_limit,
            print,
        )
        if args.out:  # the reference alone is worth keeping: later runs reuse it with --reference
            with open(args.out, "w") as fh:
                json.dump(
                    {
                        "args": vars(args),
                        "target": base_run["curve"][-1]["loss"],
                        "results": [base_run],
                    },
                    fh,
                    indent=1,
                )
    if args.fast_from:
        with open(args.fast_from) as fh:
            fast_run = json.load(fh)["results"][-1]
        if fast_run["config"] != fast.to_dict():
            raise SystemExit(
                f"--fast-from {args.fast_from} was run with other settings: {fast_run['config']}"
            )
        print(f"fast curve reused from {args.fast_from}")
        for row in fast_run["curve"]:
            print(
                f"  {'fast':>8} step {row['step']:5d}  t={row['seconds']:8.1f}s  "
                f"held-out loss {row['loss']:.4f}  rec {row['rec']:.4f}  mse {row['mse']:.4f}"
            )
    else:
        fast_run = run(
            "fast", fast, x, bb, args.seed, eval_jit, eval_raw, args.fast_eval_every, 0, print
        )
    results = [base_run, fast_run]
    base = results[0]["curve"]
    # The held-out loss of a snapshot wobbles by ~0.01-0.02 from one evaluation to the
    # next (FeatUp's constant learning rate), so the level is the mean of the featup
    # run's last --target-evals evaluations; its own time is when it first gets there.
    tail = base[-max(1, args.target_evals) :]
    level = float(np.mean([row["loss"] for row in tail]))
    print(
        f"\ntarget: featup run's held-out loss level {level:.4f} (mean of its last {len(tail)} "
        f"evaluations, steps {tail[0]['step']}-{tail[-1]['step']}; final {base[-1]['loss']:.4f} "
        f"at {base[-1]['seconds']:.1f} s)"
    )
    t_ref, _ = time_to(base, level)
    for r in results:
        t, step = time_to(r["curve"], level)
        best = min(row["loss"] for row in r["curve"])
        total = r["curve"][-1]["seconds"]
        if t is None:
            print(
                f"  {r['name']:>8}: never reached it (best {best:.4f}) in {total:.1f} s; "
                f"views featurised in {r['view_seconds']:.1f} s"
            )
        else:
            print(
                f"  {r['name']:>8}: reached it at {t:.1f} s (step {step}); views featurised in "
                f"{r['view_seconds']:.1f} s; final loss {r['curve'][-1]['loss']:.4f} "
                f"at {total:.1f} s"
            )
    t_fast, _ = time_to(results[1]["curve"], level)
    if t_fast:
        print(f"speed-up of fast over featup to the featup level: {t_ref / t_fast:.1f}x")
    if args.featup_loop:
        # FeatUp's own loop does the same steps on a slower clock: its per-view cost is
        # the same backbone's, its per-step cost is timed here (see featup_loop.py).
        from featup_loop import featup_step_seconds

        grid = x.shape[-1] // bb.patch_size
        per_step = featup_step_seconds(x, grid, steps=args.featup_loop, proj_dim=128)
        ref_step = time_to(base, level)[1]
        own = base_run["view_seconds"] + (ref_step or 0) * per_step
        print(
            f"FeatUp's own training loop: {per_step:.2f} s per step (timed on {args.featup_loop} "
            f"steps here), so its run reaches the level at step {ref_step} after "
            f"{own:.0f} s (views {base_run['view_seconds']:.0f} s, same backbone)"
        )
        if t_fast and ref_step:
            print(
                f"speed-up of fast over FeatUp's own loop to the featup level: {own / t_fast:.1f}x"
            )
        results[0]["featup_loop_step_seconds"] = per_step
    # Where fast stops short of the target, the speed-up at the level it does reach:
    # its final loss, against the first time the featup run gets as low (the featup
    # curve's wobble makes that time early, which favours featup).
    fast_end = results[1]["curve"][-1]
    t_ref_end, step_ref_end = time_to(base, fast_end["loss"])
    t_fast_end, _ = time_to(results[1]["curve"], fast_end["loss"])
    if t_ref_end:
        print(
            f"at fast's final loss {fast_end['loss']:.4f}: featup first gets there at "
            f"{t_ref_end:.1f} s (step {step_ref_end} of {base[-1]['step']}), fast at "
            f"{t_fast_end:.1f} s: {t_ref_end / t_fast_end:.1f}x"
        )
    else:
        print(f"featup never got as low as fast's final loss {fast_end['loss']:.4f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "target": level, "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
