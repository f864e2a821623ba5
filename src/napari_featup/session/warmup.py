"""The one-time work of a first run, done ahead (no Qt): a worker runs it when the
widget opens, so the first Run is as quick as the later ones.

A first run pays for importing torch's and timm's modules, building the backbone,
torch's first passes (thread pools, kernel choice), scikit-learn's PCA and numpy's
linear algebra. :func:`iter_warm_up` does all of it on a tiny image with the chosen
settings, never downloading anything (weights that are not here are the Run's to
fetch), and times one backbone pass so :mod:`.estimate` knows this machine's speed.
Runs wait for a warm-up in progress (:func:`wait_for_warm_up`) instead of building
the same backbone twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import numpy as np

from ..progress import Progress

# re-entrant: the warm-up's own tiny run passes through wait_for_warm_up
_LOCK = threading.RLock()
#: the size of the image the backbone is timed on (its estimate is calibrated there)
TIMING_SIZE = (224, 224)


def weights_here(extract: dict) -> bool:
    """Whether every weight ``extract`` (iter_extract keywords) needs is on this machine
    (random, a file, or pretrained weights in the cache): a warm-up never downloads."""
    from .availability import _published_checkpoint, backbone_cached

    backbone = str(extract.get("backbone", "dinov2"))
    if extract.get("weights", "pretrained") == "pretrained" and not backbone_cached(backbone):
        return False
    if extract.get("upsampler_weights") is None:
        published = _published_checkpoint(
            str(extract.get("upsampler", "bilinear")),
            backbone,
            extract.get("use_norm"),
            extract.get("upsampler_options"),
        )
        if published is not None and not published[0].is_file():
            return False
    return True


def iter_warm_up(extract: dict) -> Generator[Progress, None, dict]:
    """Warm up for runs with ``extract`` (iter_extract keywords, as
    :meth:`~.request.RunSettings.extract_kwargs` gives them); returns what it did:
    ``{"thread", "backbone_s", "run_s", "skipped"}``."""
    from ..upsamplers import upsampler_info
    from .estimate import calibrate
    from .run import RunRequest, iter_run

    out: dict[str, Any] = {"thread": threading.get_ident(), "skipped": None}
    with _LOCK:
        yield Progress(0, 3, "warming up: libraries", stage="warmup")
        import sklearn.decomposition  # noqa: F401  (the PCA's first import is slow)
        import timm  # noqa: F401

        if not weights_here(extract):
            out["skipped"] = "weights not on this machine (the run fetches them)"
            return out
        kwargs = {k: v for k, v in extract.items() if k not in ("contrast_limits", "channels")}
        kwargs["scaling"] = "auto"  # the tiny image has no layer contrast limits
        info = upsampler_info(str(kwargs.get("upsampler", "bilinear")))
        if info.cls.fits_per_image:  # a fit is per image: nothing to gain from a tiny one
            kwargs["upsampler"] = "bilinear"
            kwargs.pop("upsampler_options", None)
            kwargs.pop("upsampler_weights", None)
        yield Progress(1, 3, "warming up: a tiny run", stage="warmup")
        tiny = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        result = None
        gen = iter_run(RunRequest(tiny, [()], kwargs, rgb=True))
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            result = stop.value
        out["run_s"] = time.perf_counter() - t0
        if result is None or result.error is not None:
            out["skipped"] = f"tiny run failed: {getattr(result, 'error', None)!r}"
            return out
        yield Progress(2, 3, "warming up: timing the backbone", stage="warmup")
        out["backbone_s"] = _time_backbone(kwargs)
        calibrate(
            str(kwargs.get("device", "auto")), kwargs["backbone"], TIMING_SIZE, out["backbone_s"]
        )
        yield Progress(3, 3, "warmed up", stage="warmup")
    return out


def _time_backbone(kwargs: dict) -> float:
    import torch

    from ..backbones import load_backbone

    bb = load_backbone(
        kwargs["backbone"],
        weights=kwargs.get("weights", "pretrained"),
        device=kwargs.get("device", "auto"),
        precision=kwargs.get("precision", "float32"),
    )
    x = torch.zeros((1, 3) + TIMING_SIZE, device=bb.device, dtype=bb.dtype)
    with torch.inference_mode():
        bb(x)  # the first pass at a new size still picks kernels
        if bb.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        bb(x)
        if bb.device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def wait_for_warm_up(poll_s: float = 0.1) -> Generator[Progress, None, None]:
    """Wait (yielding, so a run can be cancelled meanwhile) for a warm-up in
    progress to finish; returns at once when none is."""
    while not _LOCK.acquire(timeout=poll_s):
        yield Progress(0, 1, "waiting for the warm-up to finish", stage="warmup")
    _LOCK.release()
