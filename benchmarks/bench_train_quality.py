"""Figure: a JBU trained here recovers known features better than bilinear (held-out scenes).

Training needs a "backbone" that is a function of the image alone (the trainer calls it
on jittered views), so the known answer here is the *synthetic featurizer*
:class:`SceneFeaturizer`: at each pixel ``P tanh(G c + b) / sqrt(E)`` with the
synthetic module's fixed random embedding (``synthetic._feature_function``) of the
pixel's chroma ``c`` (colour minus its grey level, 3x3 median; the scenes' textures
are grey-level stripes, so chroma is constant per region and sharp at its edges), and
its output is that map average-pooled over 16 px patches. The held-out scenes are
scored (``synthetic.score``) against the featurizer's own full-resolution map, beside
bilinear, jbu-classic and guided-fit given the same low-res grid.

The run trains on scenes with seeds 0..N-1 and scores seeds 100..103 (224 px), so no
held-out scene is seen in training. Training stops at ``--steps`` or when the process
has used ``--cpu-budget`` CPU seconds (default 600 on 1 thread: at most 10 minutes of
this 2-core machine; wall time is printed too: the machine is shared, so it is longer).

Run:  PYTHONPATH=src python benchmarks/bench_train_quality.py [--cpu-budget 600]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _harness import header, peak_rss_mb, set_threads

from napari_featup import synthetic as syn
from napari_featup.preprocess import IMAGENET_MEAN, IMAGENET_STD
from napari_featup.progress import Cancelled, drive
from napari_featup.upsamplers import load_upsampler
from napari_featup.upsamplers.featup_jbu import load_featup_checkpoint
from napari_featup.upsamplers.featup_jbu.train import iter_train_jbu


class SceneFeaturizer:
    """The synthetic featurizer: ``dim`` features per pixel from the chroma, pooled."""

    name = "synthetic-chroma"
    weights = "synthetic (fixed random embedding)"

    def __init__(self, dim: int = 384, patch_size: int = 16):
        self.dim, self.patch_size = dim, patch_size
        g, b, p = (torch.from_numpy(t).float() for t in syn._feature_function(dim))
        self.g, self.b, self.p = g[:, :3], b, p

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d embedding tanh(G c + b) per pixel of normalised images (B, 3, H, W)."""
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        rgb = x * std + mean
        c = rgb - rgb.mean(1, keepdim=True)
        c = F.pad(c, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
        c = c.reshape(*c.shape[:4], 9).median(-1).values  # (B, 3, H, W)
        return torch.tanh(torch.einsum("ec,bchw->behw", self.g, 4 * c) + self.b[:, None, None])

    def project(self, e: torch.Tensor) -> torch.Tensor:
        return torch.einsum("de,behw->bdhw", self.p, e) / np.sqrt(syn.EMBED_DIM)

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution features (B, dim, H, W): the known answer."""
        return self.project(self.embed(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # the projection is linear: pool the 64-d embedding first (6x fewer channels)
        return self.project(F.avg_pool2d(self.embed(x), self.patch_size))


def held_out(seeds, size, feat: SceneFeaturizer) -> list[syn.Scene]:
    """Scenes whose truth is the featurizer's own full-resolution map."""
    out = []
    for s in seeds:
        sc = syn.make_scene(size, seed=s, dim=feat.dim)
        _, img = syn.scene_tensors(sc)
        with torch.no_grad():
            full = feat.full(img)
        sc.features = full[0].numpy()
        sc.lowres = F.avg_pool2d(full, feat.patch_size)[0].numpy()
        out.append(sc)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-scenes", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--cpu-budget", type=float, default=600.0, help="CPU seconds (all threads)")
    ap.add_argument("--size", type=int, default=128, help="training crop (px)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also save the trained checkpoint here")
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="resumable checkpoint every 20 steps; an existing one is resumed (its CPU "
        "seconds count against the budget)",
    )
    args = ap.parse_args(argv)
    set_threads(args.threads)
    print(header("bench_train_quality: trained JBU vs training-free, known answer", "none"))
    feat = SceneFeaturizer()
    train = [syn.make_scene(224, seed=s).image for s in range(args.train_scenes)]
    test = held_out(args.seeds, 224, feat)
    print(
        f"train: {len(train)} scenes (seeds 0..{len(train) - 1}, 224 px, random {args.size} px "
        f"crops); held out: seeds {args.seeds} (224 px); featurizer {feat.dim}-d, stride 16, "
        f"use_norm False; lr {args.lr}, FeatUp's objective otherwise (batch 4, 5 jitters, CRF)"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    curve = []

    tmp = Path(args.checkpoint) if args.checkpoint else Path(tempfile.mkdtemp()) / "run.ckpt"
    resume, before = None, 0.0
    if tmp.exists():
        resume = tmp
        before = float(torch.load(tmp, weights_only=True)["napari_featup_resume"]["cpu_seconds"])
        print(f"resuming {tmp} ({before:.0f} CPU s of training already spent)")

    def stop() -> bool:
        return before + time.process_time() - c0 >= args.cpu_budget

    gen = iter_train_jbu(train, feat, steps=args.steps, size=args.size, lr=args.lr,
                         use_norm=False, checkpoint=tmp, checkpoint_every=20,
                         resume=resume)  # fmt: skip
    try:
        up = drive(gen, on_event=lambda e: curve.append((e.done, e.loss)), should_cancel=stop)
        info = up.info
    except Cancelled:  # the budget: the trainer saved its last whole step on the way out
        up = load_featup_checkpoint(tmp, use_norm=False)
        info = torch.load(tmp, weights_only=True)["napari_featup"]
    wall, cpu = time.perf_counter() - t0, before + time.process_time() - c0
    if args.out:
        shutil.copyfile(tmp, args.out)
    steps = len(info["loss_curve"])
    print(f"trained {steps} steps in {cpu:.0f} CPU s ({args.threads} threads), {wall:.0f} s wall"
          f"{' (this process)' if resume else ''},"
          f" peak RSS {peak_rss_mb():.0f} MB")  # fmt: skip
    lc = info["loss_curve"]
    marks = sorted({0, len(lc) // 4, len(lc) // 2, 3 * len(lc) // 4, len(lc) - 1})
    print(
        "loss: "
        + ", ".join(f"step {i + 1} {np.mean(lc[max(0, i - 4) : i + 1]):.4f}" for i in marks)
    )

    rows = {"trained featup-jbu (this run)": up}
    for name in ("bilinear", "jbu-classic", "guided-fit"):
        rows[name] = load_upsampler(name, use_norm=False, device="cpu")
    cols = f"{'cos':>7s} {'bnd_err':>8s} {'thin_iou':>8s} {'miou':>7s} {'lowres_err':>10s}"
    print(f"\n{'upsampler':32s} {cols}")
    res = {}
    for label, u in rows.items():
        scores = []
        for sc in test:
            low, img = syn.scene_tensors(sc)
            for _ in u.iter_fit(low, img):
                pass
            with torch.inference_mode():
                out = u.upsample(low, img)
            scores.append(syn.score(out[0], sc))
        r = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
        res[label] = r
        print(f"{label:32s} {r['cos']:7.4f} {r['boundary_err']:8.4f} {r['thin_iou']:8.3f} "
              f"{r['miou']:7.3f} {r['lowres_err']:10.4f}")  # fmt: skip
    ratio = res["trained featup-jbu (this run)"]["boundary_err"] / res["bilinear"]["boundary_err"]
    print(f"\nboundary error, trained JBU / bilinear: {ratio:.2f}x (goal <= 0.70x) -> "
          f"{'MET' if ratio <= 0.7 else 'NOT MET'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
