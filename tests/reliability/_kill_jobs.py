"""Job process for the batch and training kill tests (a script, not collected by pytest).

It imports the package once, loads the models (random weights, one torch thread) and
forks one child per request; the test SIGKILLs children at chosen moments. Children
fork from the same warm state, so an interrupted-then-resumed run and an uninterrupted
one compute with the same models, threads and code: their results can be compared bit
for bit.

Protocol, one JSON line in per job: ``{"job": "batch", "inputs": DIR, "store": PATH}``
(:func:`napari_featup.extract_many` of a folder into a store) or ``{"job": "train",
"out": PATH, "resume": PATH | null}`` (:func:`napari_featup.train_jbu` of
:data:`TRAIN_STEPS` steps, a checkpoint after every step). Children answer ``ready PID``
before they start, then ``done PID SECONDS SUMMARY`` or ``error PID MESSAGE``.

usage: python _kill_jobs.py
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

import napari_featup as nf  # noqa: E402
from napari_featup.to_store import ExtractSettings, models_for  # noqa: E402

#: the batch settings (dino16 with random weights: a real ViT, small and quick)
BATCH = dict(backbone="dino16", weights="random", upsampler="bilinear", device="cpu")
TRAIN_STEPS = 5
#: as tests/train: small crops and batches, every step checkpointed
TRAIN = dict(size=32, batch_size=2, n_jitters=2, crf_samples=50, max_pad=4, checkpoint_every=1)


class TinyBackbone:
    """A user-supplied backbone (8 px patches, 8-d): a fixed random strided conv."""

    dim = 8
    patch_size = 8

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(8, 3, 8, 8, generator=g) * 0.1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.conv2d(x, self.w, stride=8))


def train_images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:56]
    out = []
    for i in range(n):
        lab = ((yy // (6 + i)) + (xx // (7 + i))) % 3
        img = rng.uniform(0, 255, (3, 3))[lab] + rng.normal(0, 4, (48, 56, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8)[: 40 + 4 * i])
    return out


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: parent and children share stdout


def _run(request: dict) -> str:
    if request["job"] == "batch":
        fs = nf.extract_many(request["inputs"], request["store"], **BATCH)
        r = fs.report
        return f"computed={len(r.computed)},skipped={len(r.skipped)}"
    up = nf.train_jbu(
        train_images(), TinyBackbone(), steps=TRAIN_STEPS, out=request["out"],
        resume=request.get("resume"), **TRAIN,
    )  # fmt: skip
    return f"steps={up.info['steps']}"


def _child(request: dict) -> None:
    _say(f"ready {os.getpid()}")
    t0 = time.perf_counter()
    try:
        summary = _run(request)
    except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
        _say(f"error {os.getpid()} {type(exc).__name__}: {exc}".replace("\n", " "))
        os._exit(1)
    _say(f"done {os.getpid()} {time.perf_counter() - t0:.6f} {summary}")
    os._exit(0)


def _warm_up() -> None:
    """One small batch and one training step here, so children start with every module
    imported and every lazy initialisation done (a forked job then takes milliseconds
    to start, and many kill points fit in a few seconds)."""
    import tempfile

    models_for(ExtractSettings(**BATCH))  # loaded once; children inherit them
    with tempfile.TemporaryDirectory() as tmp:
        img = np.random.default_rng(0).integers(0, 4000, (48, 64)).astype(np.uint16)
        tifffile.imwrite(os.path.join(tmp, "warm.tif"), img)
        nf.extract_many(os.path.join(tmp, "warm.tif"), os.path.join(tmp, "w.zarr"), **BATCH)
        nf.train_jbu(train_images(), TinyBackbone(), steps=1, out=os.path.join(tmp, "w.ckpt"),
                     **TRAIN)  # fmt: skip


def main() -> None:
    _warm_up()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    _say("up")
    for line in sys.stdin:
        request = json.loads(line)
        if os.fork() == 0:
            _child(request)


if __name__ == "__main__":
    main()
