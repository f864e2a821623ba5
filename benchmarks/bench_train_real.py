"""Figure: held-out reconstruction loss of a trained JBU vs bilinear on real images, and
the training loss against time. A CODE-PATH figure: the backbone has random weights.

Photos and micrographs bundled with scikit-image (no download). Training uses FeatUp's
objective on the training images; the held-out score is one that does not involve the
learned downsampler, so every upsampler is judged alike: for each held-out image and
each of 5 fixed jitters, the upsampled features are jittered, average-pooled back to the
grid (patch size, stride patch size) and compared with the backbone's features of the
jittered image: ``|pool(jitter(up(f))) - f_jit|^2 / |f_jit - mean|^2`` (relative MSE,
features channel-normed as trained). Bilinear and the untrained (FeatUp-initialised)
JBU are scored the same way.

Run:  PYTHONPATH=src python benchmarks/bench_train_real.py [--steps 100] [--size 112]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from _harness import RANDOM_WEIGHTS, header, peak_rss_mb, set_threads
from skimage import data as skdata

from napari_featup.backbones import load_backbone
from napari_featup.ops import channel_norm
from napari_featup.upsamplers import load_upsampler
from napari_featup.upsamplers.featup_jbu import FeatUpJBU
from napari_featup.upsamplers.featup_jbu.train import TrainConfig, train_jbu
from napari_featup.upsamplers.featup_jbu.train_data import ImageSet
from napari_featup.upsamplers.featup_jbu.train_objective import jitter
from napari_featup.upsamplers.implicit.views import sample_jitter

TRAIN = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "horse",
         "clock", "brick", "retina", "hubble_deep_field"]  # fmt: skip
HELD_OUT = ["immunohistochemistry", "cell", "grass", "colorwheel"]


def load(names):
    return [getattr(skdata, n)() for n in names]


@torch.no_grad()
def held_out_loss(up, bb, images: ImageSet, size: int) -> float:
    cfg = TrainConfig(size=size)
    g = torch.Generator().manual_seed(1234)  # the same views for every upsampler
    errs = []
    for i in range(len(images)):
        img = images.crop(i, None)[None]
        f = channel_norm(bb(img))
        for _ in range(5):
            j = sample_jitter((size, size), cfg, g)
            jimg = jitter(img, j, cfg.max_pad)
            fj = channel_norm(bb(jimg))
            hr = up.upsample(f, img) if hasattr(up, "upsample") else up(f, img)
            pooled = F.avg_pool2d(jitter(hr, j, cfg.max_pad), bb.patch_size)
            var = (fj - fj.mean((2, 3), keepdim=True)).square().mean()
            errs.append(float((pooled - fj).square().mean() / var))
    return float(np.mean(errs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="dinov2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=112, help="crop px (a multiple of the stride)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    print(header("bench_train_real: trained JBU vs bilinear on held-out real images",
                 RANDOM_WEIGHTS))  # fmt: skip
    bb = load_backbone(args.backbone, weights="random", device="cpu")
    size = args.size // bb.patch_size * bb.patch_size
    print(f"backbone {args.backbone} (RANDOM weights), {size} px crops, batch 4, 5 jitters, "
          f"lr {args.lr}, {args.steps} steps; train: {', '.join(TRAIN)}; "
          f"held out: {', '.join(HELD_OUT)}")  # fmt: skip
    test = ImageSet(load(HELD_OUT), size)
    stamps = []
    t0, c0 = time.perf_counter(), time.process_time()

    def note(e):
        if e.stage == "train" and e.done == int(e.done):
            stamps.append((int(e.done), time.perf_counter() - t0, time.process_time() - c0, e.loss))

    up = train_jbu(load(TRAIN), bb, steps=args.steps, size=size, lr=args.lr, on_event=note)
    print(f"trained in {stamps[-1][1]:.0f} s wall, {stamps[-1][2]:.0f} s CPU; peak RSS "
          f"{peak_rss_mb():.0f} MB")  # fmt: skip
    print("training loss against time (mean of the last 5 steps):")
    print(f"  {'step':>5s} {'wall_s':>7s} {'cpu_s':>7s} {'loss':>8s}")
    losses = [s[3] for s in stamps]
    for k in sorted({0, *range(9, len(stamps), max(1, len(stamps) // 10)), len(stamps) - 1}):
        s = stamps[k]
        print(f"  {s[0]:5d} {s[1]:7.1f} {s[2]:7.1f} {np.mean(losses[max(0, k - 4) : k + 1]):8.4f}")
    torch.manual_seed(0)
    init = FeatUpJBU(bb.dim).eval()
    rows = {
        "bilinear": load_upsampler("bilinear", device="cpu"),
        "featup-jbu, FeatUp init (untrained)": init,
        f"featup-jbu, trained {args.steps} steps": up,
    }
    print("\nheld-out reconstruction loss (relative MSE, lower is better):")
    res = {k: held_out_loss(u, bb, test, size) for k, u in rows.items()}
    for k, v in res.items():
        print(f"  {k:40s} {v:.4f}")
    tr = res[f"featup-jbu, trained {args.steps} steps"]
    print(f"trained / bilinear: {tr / res['bilinear']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
