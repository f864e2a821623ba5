"""Figure: time per JBU training step on CPU (224 px, batch 4, 5 jitters), and memory.

For each backbone (random weights: code speed only), one step is timed in parts: the
backbone on the 4 images and their 20 jittered views (no gradients), and FeatUp's loss
with its backward through the differentiable JBU path (``autograd.py``, 31 channels
per jitter, ``train_objective.py``); then a few whole steps of ``train_jbu``. The
FeatUp-style reference (``train_reference.py``: the whole C-channel stack per jitter
through ``reference.py``) is timed at batch 1 and one jitter, and scaled by 20 (it is
20 independent passes); at full size it would need several GB.

Wall and CPU seconds are both printed: the machine is shared, so wall time includes
waiting for a core; CPU time (process, all threads) is the cost.

Run:  PYTHONPATH=src python benchmarks/bench_train_step.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _harness import RANDOM_WEIGHTS, header, peak_rss_mb, set_threads

from napari_featup.backbones import load_backbone
from napari_featup.ops import channel_norm
from napari_featup.upsamplers.featup_jbu import FeatUpJBU
from napari_featup.upsamplers.featup_jbu.train import TrainConfig, train_jbu
from napari_featup.upsamplers.featup_jbu.train_objective import (
    AttentionDownsampler,
    ScaleNet,
    draw,
    jitter,
    step_loss,
)
from napari_featup.upsamplers.featup_jbu.train_reference import featup_loss
from napari_featup.upsamplers.implicit.views import sample_jitter


def clock(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def parts(bb, bsz: int, n_j: int, size: int, reference: bool):
    cfg = TrainConfig()
    p, dim = bb.patch_size, bb.dim
    grid = size // p
    g = torch.Generator().manual_seed(0)
    img = torch.randn(bsz, 3, size, size, generator=g)
    jits = [sample_jitter((size, size), cfg, g) for _ in range(n_j)]
    d = draw(g, bsz, dim, (size, size), (grid, grid), jits, dropout=not reference)
    jit_imgs = [jitter(img, j, cfg.max_pad) for j in jits]
    with torch.no_grad():
        feats, bw, bc = clock(lambda: channel_norm(bb(torch.cat([img, *jit_imgs]))))
    lr, lr_jit = feats[:bsz], list(feats[bsz:].split(bsz))
    torch.manual_seed(0)
    mods = FeatUpJBU(dim), AttentionDownsampler(dim, p), ScaleNet(dim)
    fn = featup_loss if reference else step_loss

    def loss_step():
        loss = fn(*mods, img, lr, jit_imgs, lr_jit, d, cfg.max_pad, 0.001)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()

    if not reference:
        loss_step()  # warm-up (allocator, first-call costs)
    _, lw, lc = clock(loss_step)
    return bw, bc, lw, lc


def jbu_paths(grid: int = 16, channels: int = 155, bsz: int = 4) -> None:
    """The JBU stack alone on the step's 155 channels: the inference path (no autograd)
    against the differentiable one, forward and forward + backward."""
    from napari_featup.upsamplers.featup_jbu.autograd import stack_linear

    torch.manual_seed(0)
    up = FeatUpJBU(384).eval()
    g = torch.Generator().manual_seed(0)
    img = torch.randn(bsz, 3, 16 * grid, 16 * grid, generator=g)
    vals = torch.randn(bsz, channels, grid, grid, generator=g)

    def inference():
        with torch.inference_mode():
            up.kernels(img, (grid, grid), cache=False).native_rows(vals, 0, 16 * grid)

    def forward():
        with torch.no_grad():
            stack_linear(up, vals, img)

    def both():
        v = vals.clone().requires_grad_(True)
        stack_linear(up, v, img).square().sum().backward()

    print(f"JBU stack alone: batch {bsz}, {grid}x{grid} grid -> {16 * grid} px, {channels} "
          "channels (seconds, wall / CPU, best of 2):")  # fmt: skip
    for label, fn in (("inference path (kernels.py), forward", inference),
                      ("differentiable path, forward", forward),
                      ("differentiable path, forward + backward", both)):  # fmt: skip
        fn()
        runs = [clock(fn)[1:] for _ in range(2)]
        w, c = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  {label:42s} {w:6.2f} / {c:6.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backbones", nargs="+", default=["dinov2", "dinov2-b"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=3, help="whole train_jbu steps to time")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--jbu-only", action="store_true", help="only the JBU paths")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    print(header("bench_train_step: JBU training step on CPU", RANDOM_WEIGHTS))
    jbu_paths()
    if args.jbu_only:
        return 0
    print(f"{args.size} px, batch 4, 5 jitters, FeatUp's loss (random projection 30, CRF 1000 "
          "samples); seconds per step, wall / CPU")  # fmt: skip
    for name in args.backbones:
        bb = load_backbone(name, weights="random", device="cpu")
        bw, bc, lw, lc = parts(bb, 4, 5, args.size, reference=False)
        print(f"{name} ({bb.dim}-d, stride {bb.patch_size}):")
        print(f"  backbone, 24 images (no grad)      {bw:7.2f} / {bc:7.2f}")
        print(f"  loss + backward, fast path        {lw:7.2f} / {lc:7.2f}")
        rng = np.random.default_rng(0)
        imgs = [rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8) for _ in range(8)]
        stamps: list[tuple[float, float, float]] = []

        c0 = time.process_time()

        def note(e, stamps=stamps, c0=c0):
            if e.done == int(e.done) and e.done >= 1:  # the end of a step
                stamps.append((e.done, time.perf_counter(), time.process_time() - c0))

        train_jbu(imgs, bb, steps=args.steps, size=args.size, on_event=note)
        per = [(b[1] - a[1], b[2] - a[2]) for a, b in zip(stamps, stamps[1:])]
        w, c = np.median([x[0] for x in per]), np.median([x[1] for x in per])
        print(f"  whole step (train_jbu, median)     {w:7.2f} / {c:7.2f}")
        if not args.no_reference:
            rw, rc = parts(bb, 1, 1, args.size, reference=True)[2:]
            print(f"  loss + backward, reference path, batch 1 x 1 jitter {rw:.2f} / {rc:.2f}"
                  f" -> x20 = {20 * rw:.1f} / {20 * rc:.1f} per step")  # fmt: skip
        print(f"  peak RSS so far {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
