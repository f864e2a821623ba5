"""Train a FeatUp JBU stack for any backbone on the user's own images.

:func:`iter_train_jbu` is the trainer as a generator of :class:`~napari_featup.progress.Progress`
events (``stage="train"``, ``loss`` set; closing it cancels at that point and, when a
checkpoint path was given, saves a resumable checkpoint there). :func:`train_jbu` drives
it and returns a :class:`TrainedJBU`: the stack in eval mode, callable like any
upsampler, with :meth:`TrainedJBU.save`.

The objective is FeatUp's (``train_objective.py``); the stack is evaluated with gradients
by ``autograd.py``. All randomness (crops, jitters, projections, dropout, CRF samples)
comes from one seeded ``torch.Generator`` on the CPU whose state is checkpointed, and the
data order is a function of (seed, step): a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...devices import resolve_device
from ...errors import BackboneError, UpsamplerError, WeightsFileError
from ...ops import channel_norm
from ...progress import Progress, drive
from ..implicit.views import sample_jitter
from . import train_checkpoint as ckpt
from .stack import FeatUpJBU
from .train_data import ImageSet, batch_indices
from .train_objective import AttentionDownsampler, ScaleNet, draw, jitter, step_loss


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; the defaults are FeatUp's ``jbu_upsampler.yaml``.

    Attributes
    ----------
    steps
        Optimiser steps (each one batch).
    batch_size, n_jitters, size
        Images per step, jittered views per image, crop side in px (a multiple of the
        backbone's stride; rounded down to one otherwise).
    lr
        NAdam learning rate.
    max_pad, max_zoom, flips
        The jitter: reflect pad, zoom range [1, max_zoom], horizontal flips.
    crf_weight, crf_samples, crf_on_jittered
        The sampled CRF term (see :func:`~.train_objective.step_loss`).
    clip_steps, clip_norm
        Gradient norm clipping for the first steps (FeatUp: 10 steps at 1e-4).
    checkpoint_every
        Steps between checkpoints (when a checkpoint path is given).
    seed
        Seeds the init, the data order and every random draw.
    crop
        ``"random"`` crops of the resized images, or ``"center"`` (FeatUp).
    dropout
        FeatUp trains with its dropouts on; False for tests that compare with references.
    feature_batch
        Images per backbone call (memory of the backbone pass).
    """

    steps: int = 500
    batch_size: int = 4
    n_jitters: int = 5
    size: int = 224
    lr: float = 1e-3
    max_pad: int = 20
    max_zoom: float = 2.0
    flips: bool = True
    crf_weight: float = 0.001
    crf_samples: int = 1000
    crf_on_jittered: bool = True
    clip_steps: int = 10
    clip_norm: float = 1e-4
    checkpoint_every: int = 100
    seed: int = 0
    crop: str = "random"
    dropout: bool = True
    feature_batch: int = 8

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.n_jitters < 1:
            raise UpsamplerError("steps >= 0, batch_size >= 1 and n_jitters >= 1 are needed")
        if self.crop not in ("random", "center"):
            raise UpsamplerError(f"crop must be 'random' or 'center', got {self.crop!r}")
        if self.checkpoint_every < 1:
            raise UpsamplerError("checkpoint_every must be at least 1")


#: settings a resumed run must share with the run it continues
_SAME_ON_RESUME = (
    "batch_size", "n_jitters", "size", "lr", "max_pad", "max_zoom", "flips", "crf_weight",
    "crf_samples", "crf_on_jittered", "clip_steps", "clip_norm", "seed", "crop", "dropout",
)  # fmt: skip


class TrainedJBU(FeatUpJBU):
    """A JBU stack from :func:`train_jbu`: a :class:`FeatUpJBU` plus the downsampler and
    uncertainty net it was trained with, and the run's metadata (``info``)."""

    def __init__(self, dim: int, use_norm: bool = True):
        super().__init__(dim, use_norm=use_norm)
        self.info: dict[str, Any] = {}
        self._checkpoint: dict[str, Any] | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the run's checkpoint (FeatUp's layout, our metadata) atomically."""
        if self._checkpoint is None:
            raise UpsamplerError("this stack holds no training checkpoint to save")
        return ckpt.save_atomic(self._checkpoint, path)


def _resolve_backbone(backbone: Any, weights: Any, device: torch.device) -> Any:
    """A backbone name or object -> an object with ``dim``, ``patch_size``, ``__call__``."""
    if isinstance(backbone, str):
        from ...backbones import load_backbone

        return load_backbone(backbone, weights=weights, device=device)
    missing = [a for a in ("dim", "patch_size") if getattr(backbone, a, None) is None]
    if missing or not callable(backbone):
        what = " and ".join(missing) if missing else "__call__"
        raise BackboneError(
            f"backbone {type(backbone).__name__} has no {what}: a training backbone needs "
            "dim (channels), patch_size (stride in px) and __call__(x) -> (B, dim, h, w)"
        )
    if int(backbone.patch_size) < 1 or int(backbone.dim) < 1:
        raise BackboneError("backbone dim and patch_size must be positive integers")
    return backbone


def _features(bb: Any, x: torch.Tensor, cfg: TrainConfig, use_norm: bool, grid: int):
    """Backbone features of (N, 3, S, S), in ``feature_batch`` chunks, channel-normed."""
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], cfg.feature_batch):
            f = bb(x[i : i + cfg.feature_batch])
            if not isinstance(f, torch.Tensor) or f.dim() != 4:
                raise BackboneError(f"backbone returned {type(f).__name__}, not (B, C, h, w)")
            outs.append(f.to(x.device).float())
    f = torch.cat(outs)
    if f.shape[1] != int(bb.dim) or tuple(f.shape[-2:]) != (grid, grid):
        raise BackboneError(
            f"backbone gave {tuple(f.shape[1:])} for {x.shape[-1]} px crops; expected "
            f"({int(bb.dim)}, {grid}, {grid}) from dim={bb.dim}, patch_size={bb.patch_size}"
        )
    return channel_norm(f) if use_norm else f


def _metadata(bb, data, cfg, use_norm, steps, losses, init, elapsed, cpu, device) -> dict:
    from ... import __version__

    spec = getattr(bb, "spec", None)
    return {
        "format": "napari-featup trained JBU 1",
        "version": __version__,
        "torch": str(torch.__version__),  # a TorchVersion would not load weights_only
        "backbone": str(getattr(bb, "name", type(bb).__name__)),
        "timm_name": getattr(spec, "timm_name", None) or "",
        "backbone_weights": str(getattr(bb, "weights", "")),
        "dim": int(bb.dim),
        "patch_size": int(bb.patch_size),
        "use_norm": bool(use_norm),
        "image_count": len(data),
        "steps": int(steps),
        "loss_curve": [float(v) for v in losses],
        "init": init,
        "config": dataclasses.asdict(cfg),
        "seconds": float(elapsed),
        "cpu_seconds": float(cpu),
        "device": str(device),
    }


def iter_train_jbu(
    images: Any,
    backbone: Any,
    *,
    steps: int | None = None,
    out: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    use_norm: bool = True,
    device: str | torch.device = "auto",
    backbone_weights: Any = "pretrained",
    prepare: dict | None = None,
    **options: Any,
) -> Generator[Progress, None, TrainedJBU]:
    """Train a JBU stack, yielding progress; returns the :class:`TrainedJBU`.

    Parameters
    ----------
    images
        Arrays (2-D grey, RGB(A), or stacks), image files, folders, globs or a dask stack.
    backbone
        A registered backbone name, a loaded Backbone, or any object with ``dim``,
        ``patch_size`` and ``__call__(x) -> (B, dim, h, w)`` for ImageNet-normalised x.
    steps
        Length of the run (overrides ``options["steps"]``).
    out
        Where to write the final checkpoint (also available via :meth:`TrainedJBU.save`).
    checkpoint
        Where to write resumable checkpoints every ``checkpoint_every`` steps and on
        cancel (atomically); defaults to ``out`` + ``.partial`` when ``out`` is given.
    resume
        A checkpoint of this run to continue from (same images, backbone and settings).
    init
        A FeatUp checkpoint to fine-tune (its downsampler and uncertainty net too, when
        present and of the right shape); None starts from FeatUp's initialisation.
    use_norm
        FeatUp's channel LayerNorm on the features (recorded in the checkpoint).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``...; the same code runs on each.
    backbone_weights
        Weights for a backbone given by name (``"pretrained"``, ``"random"`` or a path).
    prepare
        Keyword arguments of :func:`~napari_featup.preprocess.prepare_image` (scaling,
        channels) applied to every image.
    **options
        :class:`TrainConfig` fields.

    Yields
    ------
    Progress
        One per step, with ``loss`` set.

    Returns
    -------
    TrainedJBU

    Raises
    ------
    ImageError, BackboneError, UpsamplerError, WeightsFileError
        Bad images, backbone, settings or checkpoint (before the first step).
    """
    if steps is not None:
        options["steps"] = steps
    bad = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
    if bad:
        raise UpsamplerError(f"unknown training options {bad}")
    cfg = TrainConfig(**options)
    dev = resolve_device(device)
    yield Progress(0, cfg.steps, "loading backbone and images", "load", math.nan)
    bb = _resolve_backbone(backbone, backbone_weights, dev)
    patch, dim = int(bb.patch_size), int(bb.dim)
    size = (cfg.size // patch) * patch
    if size < patch:
        raise UpsamplerError(f"size {cfg.size} is smaller than the backbone stride {patch}")
    cfg = dataclasses.replace(cfg, size=size)
    grid = size // patch
    data = ImageSet(images, size, prepare)

    with torch.random.fork_rng(devices=[]):  # seeded init, the caller's RNG untouched
        torch.manual_seed(cfg.seed)
        jbu = TrainedJBU(dim, use_norm=use_norm)
        down = AttentionDownsampler(dim, patch)
        scale_net = ScaleNet(dim)
    init_desc = "FeatUp initialisation (random, seeded)"
    if init is not None:
        state = ckpt.read_checkpoint(init)["state_dict"]
        if not ckpt.load_part(jbu, state, "upsampler", str(init)):
            raise WeightsFileError(f"{str(init)!r} holds no upsampler.* weights to fine-tune")
        extra = [
            p
            for p, m in (("downsampler", down), ("scale_net", scale_net))
            if ckpt.load_part(m, state, p, str(init))
        ]
        init_desc = f"fine-tuned from {init} (upsampler{''.join(', ' + e for e in extra)})"
    mods = [down, jbu, scale_net]  # FeatUp's optimiser order
    for m in mods:
        m.to(dev)
    params = [p for m in mods for p in m.parameters()]
    opt = torch.optim.NAdam(params, lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, losses, spent, spent_cpu = 0, [], 0.0, 0.0
    if resume is not None:
        start, losses, spent, spent_cpu, init_desc = _restore(
            resume, cfg, bb, len(data), use_norm, mods, opt, gen
        )
    if checkpoint is None and out is not None:
        checkpoint = str(out) + ".partial"

    def snapshot(step: int, gen_state: torch.Tensor) -> dict:
        meta = _metadata(bb, data, cfg, use_norm, step, losses, init_desc, spent, spent_cpu, dev)
        resume_state = {
            "step": int(step),
            "generator": gen_state.clone(),
            "config": dataclasses.asdict(cfg),
            "image_count": len(data),
            "dim": dim,
            "patch_size": patch,
            "use_norm": bool(use_norm),
            "seconds": float(spent),
            "cpu_seconds": float(spent_cpu),
            "init": init_desc,
        }
        epoch = step * cfg.batch_size // max(1, len(data))
        return ckpt.checkpoint_dict(jbu, down, scale_net, opt, step, epoch, meta, resume_state)

    step = start
    gen_state = gen.get_state()
    finished = False
    try:
        for step in range(start, cfg.steps):
            gen_state = gen.get_state()  # the state a resume of this step starts from
            t0, c0 = time.perf_counter(), time.process_time()
            idx = batch_indices(len(data), cfg.seed, step, cfg.batch_size)
            crop_gen = gen if cfg.crop == "random" else None
            img = torch.stack([data.crop(i, crop_gen) for i in idx]).to(dev)
            jit = [sample_jitter((size, size), cfg, gen) for _ in range(cfg.n_jitters)]
            d = draw(
                gen, len(idx), dim, (size, size), (grid, grid), jit, cfg.dropout, cfg.crf_samples
            ).to(dev)
            jit_imgs = [jitter(img, j, cfg.max_pad) for j in jit]
            feats = _features(bb, torch.cat([img, *jit_imgs]), cfg, use_norm, grid)
            lr, lr_jit = feats[: len(idx)], list(feats[len(idx) :].split(len(idx)))
            yield Progress(
                step + 0.5,
                cfg.steps,
                f"step {step + 1}: backbone done",
                "train",
                losses[-1] if losses else math.nan,
            )
            loss, _ = step_loss(
                jbu,
                down,
                scale_net,
                img,
                lr,
                jit_imgs,
                lr_jit,
                d,
                cfg.max_pad,
                cfg.crf_weight,
                cfg.crf_on_jittered,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step < cfg.clip_steps:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            opt.step()
            losses.append(float(loss.detach()))
            spent += time.perf_counter() - t0
            spent_cpu += time.process_time() - c0
            gen_state = gen.get_state()
            if checkpoint is not None and (step + 1) % cfg.checkpoint_every == 0:
                ckpt.save_atomic(snapshot(step + 1, gen_state), checkpoint)
            yield Progress(step + 1, cfg.steps, "training the JBU", "train", losses[-1])
        finished = True
    finally:
        if not finished and checkpoint is not None:
            # cancelled or failed: keep what is done (the last whole step) for --resume
            ckpt.save_atomic(snapshot(len(losses), gen_state), checkpoint)
    final = snapshot(cfg.steps if cfg.steps >= start else start, gen.get_state())
    jbu.info = final[ckpt.META_KEY]
    jbu._checkpoint = final
    jbu.source = f"trained: {jbu.info['backbone']}, {jbu.info['steps']} steps"
    if out is not None:
        ckpt.save_atomic(final, out)
    return jbu.eval()


def _restore(resume, cfg, bb, n_images, use_norm, mods, opt, gen):
    """Load a resume checkpoint into the modules, optimiser and generator; check it is
    this run's. Returns (step, losses, seconds, cpu seconds, init description)."""
    path = str(resume)
    obj = ckpt.read_checkpoint(path)
    rs = obj.get(ckpt.RESUME_KEY)
    if not isinstance(rs, dict):
        raise WeightsFileError(f"{path!r} is not a napari-featup training checkpoint")
    mine = dataclasses.asdict(cfg)
    diff = [k for k in _SAME_ON_RESUME if rs["config"].get(k) != mine[k]]
    if rs["dim"] != int(bb.dim) or rs["patch_size"] != int(bb.patch_size):
        diff.append("backbone dim/patch_size")
    if rs["image_count"] != n_images:
        diff.append(f"image count ({rs['image_count']} then, {n_images} now)")
    if bool(rs["use_norm"]) != bool(use_norm):
        diff.append("use_norm")
    if diff:
        raise UpsamplerError(f"cannot resume from {path!r}: the run differs in {', '.join(diff)}")
    state = obj["state_dict"]
    for prefix, m in zip(("downsampler", "upsampler", "scale_net"), mods):
        ckpt.load_part(m, state, prefix, path)
    opt.load_state_dict(obj["optimizer_states"][0])
    gen.set_state(rs["generator"])
    meta = obj.get(ckpt.META_KEY, {})
    return (
        int(rs["step"]),
        list(meta.get("loss_curve", [])),
        float(rs["seconds"]),
        float(rs["cpu_seconds"]),
        rs["init"],
    )


def train_jbu(
    images: Any, backbone: Any, *, on_event=None, should_cancel=None, **kwargs: Any
) -> TrainedJBU:
    """Train a JBU stack and return it in eval mode.

    Parameters
    ----------
    images, backbone
        As :func:`iter_train_jbu`.
    on_event : callable, optional
        Called with each :class:`~napari_featup.progress.Progress` (``loss`` set).
    should_cancel : callable, optional
        Polled at every step; True stops the run (its resumable checkpoint is kept).
    **kwargs
        :func:`iter_train_jbu`'s keywords (``steps``, ``out``, ``resume``, ``init``, ...).

    Returns
    -------
    TrainedJBU
        Callable like any upsampler (``up(lowres, image)``); ``.save(path)`` writes a
        FeatUp-format checkpoint.

    Raises
    ------
    Cancelled
        ``should_cancel`` returned True.
    """
    return drive(iter_train_jbu(images, backbone, **kwargs), on_event, should_cancel)


__all__ = ["TrainConfig", "TrainedJBU", "iter_train_jbu", "train_jbu"]
