"""The fit: :class:`ImplicitFitter` holds one fit's state (views, PCA, networks,
optimiser, FeatUp's loss); :func:`iter_fit_implicit` drives it as a generator of
:class:`~napari_featup.progress.Progress` events returning the
:class:`~.features.ImplicitFeatures`; :func:`fit_implicit` runs that to the end."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone, load_backbone, pad_to_stride
from ...errors import BackboneError, ImageError, UpsamplerError
from ...ops import channel_norm, gaussian_blur5
from ...preprocess import normalize, prepare_image
from ...progress import Progress, drive
from .config import ImplicitConfig, resolve_config
from .features import ImplicitFeatures
from .model import AttentionDownsampler, ImplicitNet, dropout_mask
from .views import Jitter, JitterTaps, ViewOps, sample_jitter, window_origins

#: the fit's event type before progress.Progress was shared by all long work
FitProgress = Progress


def fit_size_for(size: tuple[int, int], stride: int, max_pixels: int) -> tuple[int, int]:
    """Content size (H, W) an image of ``size`` is fitted at: the image itself when
    H*W <= ``max_pixels``, else scaled down (aspect kept), at least one stride."""
    h, w = size
    if h * w <= max_pixels:
        return h, w
    t = math.sqrt(max_pixels / (h * w))
    return max(stride, int(h * t)), max(stride, int(w * t))


class ImplicitFitter:
    """The state of one fit; :func:`iter_fit_implicit` drives it.

    ``image`` (1, 3, H, W) ImageNet-normalised (not padded). The fitter pads it to the
    backbone stride (reflect), or first scales it down to ``cfg.max_fit_pixels``.
    """

    def __init__(
        self,
        image: torch.Tensor,
        backbone: Backbone,
        cfg: ImplicitConfig,
        seed: int = 0,
        use_norm: bool = True,
    ):
        self.bb = backbone
        self.cfg = cfg
        self.seed = int(seed)
        self.use_norm = bool(use_norm)
        self.device = backbone.device
        s = backbone.patch_size
        self.original_size = tuple(int(v) for v in image.shape[-2:])
        self.content_size = fit_size_for(self.original_size, s, cfg.max_fit_pixels)
        # a normal tensor even when called under inference_mode (the fit needs autograd)
        with torch.inference_mode(False):
            img = image.to(self.device, torch.float32).clone()
            if self.content_size != self.original_size:
                img = F.interpolate(
                    img, self.content_size, mode="bilinear", align_corners=False, antialias=True
                )
            self.content = img
            self.fit_image = pad_to_stride(img, s)
        self.fit_size = tuple(int(v) for v in self.fit_image.shape[-2:])
        self.grid = (self.fit_size[0] // s, self.fit_size[1] // s)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.dev_gen = (
            self.gen
            if self.device.type == "cpu"
            else torch.Generator(self.device).manual_seed(self.seed)
        )
        self.jitters: list[Jitter] = []
        self.targets: torch.Tensor | None = None  # (V, P, h, w) PCA space
        self.components = self.mean = None
        self.step_count = 0
        self.losses: list[float] = []
        self._built = False

    # -- views --------------------------------------------------------------------

    @torch.no_grad()
    def featurize(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of normalised views (V, 3, H, W), channel-normed if asked."""
        f = self.bb(x.to(self.bb.dtype)).float()
        return channel_norm(f) if self.use_norm else f

    def make_jitters(self, n: int, gen: torch.Generator | None = None) -> list[Jitter]:
        """``n`` random jitters of the fit image, drawn from ``gen`` (default: the fit's)."""
        return [sample_jitter(self.fit_size, self.cfg, gen or self.gen) for _ in range(n)]

    def taps(self, j: Jitter) -> JitterTaps:
        """The gathers that apply jitter ``j`` to a fit-size image."""
        return JitterTaps(j, self.fit_size, self.cfg.max_pad, self.device)

    @torch.no_grad()
    def view_features(self, jitters: list[Jitter]) -> torch.Tensor:
        """Backbone features (V, C, h, w) of the image under each jitter."""
        views = torch.cat([self.taps(j)(self.fit_image) for j in jitters])
        return self.featurize(views)

    def iter_views(self) -> Iterator[int]:
        """Featurise ``cfg.views`` jittered views, yielding the count done."""
        cfg = self.cfg
        self.jitters = self.make_jitters(cfg.views)
        feats = []
        for a in range(0, cfg.views, cfg.view_batch):
            feats.append(self.view_features(self.jitters[a : a + cfg.view_batch]).cpu())
            yield min(cfg.views, a + cfg.view_batch)
        with torch.inference_mode(False):
            # (V, C, h, w) on CPU: 3000 x 384 x 16 x 16 floats = 1.2 GB for FeatUp's settings
            raw = torch.cat(feats).clone()
            self._fit_pca(raw[: cfg.pca_views])
            self.targets = self.project(raw).to(self.device)
            self.raw_dim = raw.shape[1]

    @torch.no_grad()
    def _fit_pca(self, feats: torch.Tensor) -> None:
        c = feats.shape[1]
        x = feats.permute(0, 2, 3, 1).reshape(-1, c).double()
        mean = x.mean(0)
        p = min(self.cfg.proj_dim, c)
        if p == c:
            comps = torch.eye(c, dtype=torch.float64)
        else:
            cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)
            evals, evecs = torch.linalg.eigh(cov)
            comps = evecs[:, torch.argsort(evals, descending=True)[:p]].T
            # a fixed sign per component, so the basis does not depend on the solver
            sign = torch.sign(comps[torch.arange(p), comps.abs().argmax(1)])
            comps = comps * sign[:, None]
        self.components = comps.float().to(self.device)  # (P, C)
        self.mean = mean.float().to(self.device)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """(V, C, h, w) backbone features -> (V, P, h, w) PCA coordinates."""
        comps, mean = self.components.to(feats.device), self.mean.to(feats.device)
        return torch.einsum("vchw,pc->vphw", feats - mean[:, None, None], comps)

    # -- model --------------------------------------------------------------------

    def build(self) -> None:
        """Make the networks, the optimiser and the per-pixel inputs (after the views)."""
        with torch.inference_mode(False):
            self._build()

    def _build(self) -> None:
        cfg = self.cfg
        p = int(self.components.shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = ImplicitNet(cfg.n_freqs, p).to(self.device)
            self.down = AttentionDownsampler(p + 1, self.bb.patch_size).to(self.device)
            self.scale_net = nn.Linear(p, 1).to(self.device)
            with torch.no_grad():
                self.scale_net.weight.mul_(0.1)
                self.scale_net.bias.mul_(0.1)
        params = [*self.net.parameters(), *self.down.parameters(), *self.scale_net.parameters()]
        self.optim = torch.optim.NAdam(params, lr=cfg.lr)
        hf, wf = self.fit_size
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, hf, dtype=torch.float64, device=self.device),
            torch.linspace(-1, 1, wf, dtype=torch.float64, device=self.device),
            indexing="ij",
        )
        coords = torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)
        img = self.fit_image[0]
        lo = img.reshape(3, -1).min(1).values
        hi = img.reshape(3, -1).max(1).values
        self.colour_range = torch.stack([lo, hi])
        scaled = (img - lo[:, None, None]) / (hi - lo).clamp_min(1e-4)[:, None, None] - 0.5
        self.encoded = ImplicitNet.encode(coords, scaled.reshape(3, -1).T, cfg.n_freqs)
        self._built = True

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (warm-up, then constant or cosine)."""
        cfg = self.cfg
        if cfg.warmup and step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
            return cfg.lr * (cfg.lr_floor + (1 - cfg.lr_floor) * cos)
        return cfg.lr

    def view_ops(self, jitters: list[Jitter], random_windows: bool = False) -> ViewOps:
        """Operators for ``jitters``: the whole grid, or with ``random_windows`` and
        ``cfg.cells`` > 0 a random window of cells per view (cheaper steps)."""
        h, w = self.grid
        k = self.cfg.cells
        if random_windows and k > 0 and (k < h or k < w):
            kh, kw = min(k, h), min(k, w)
            origins = window_origins(len(jitters), (h, w), (kh, kw), self.gen)
            return ViewOps(
                jitters,
                self.fit_size,
                self.cfg.max_pad,
                self.device,
                self.bb.patch_size,
                (kh, kw),
                origins,
            )
        return ViewOps(
            jitters, self.fit_size, self.cfg.max_pad, self.device, self.bb.patch_size, (h, w)
        )

    def objective(
        self, ops: ViewOps, targets: torch.Tensor, train: bool
    ) -> tuple[torch.Tensor, dict]:
        """FeatUp's loss for the views of ``ops`` against ``targets`` (B, P, h, w)
        (cropped to the operators' cell windows here)."""
        cfg = self.cfg
        self.net.train(train)
        self.down.train(train)
        hf, wf = self.fit_size
        z = self.net(self.encoded, self.dev_gen, cfg.dropout if train else 0.0)  # (N, P)
        z_mag = z.norm(dim=1, keepdim=True)
        both = torch.cat([z_mag, z], dim=1)  # (N, P+1), channels last
        hr = z.T.reshape(1, z.shape[1], hf, wf)
        hr_mag = z_mag.view(1, 1, hf, wf)
        targets = ops.crop(targets)
        # Attention logits are linear in the blurred view, so take them on one channel
        # before jittering. Training drops input channels per view (FeatUp drops single
        # entries; per-channel keeps this a one-channel product).
        a = self.down.attn.weight[0]
        bsz = len(ops)
        p_drop = cfg.attn_dropout if train else 0.0
        m = dropout_mask((bsz, a.shape[0]), p_drop, self.dev_gen, a.device)
        av = a.expand(bsz, -1) if m is None else a * m
        logit_map = (both @ av.T).T.reshape(bsz, 1, hf, wf)
        logits = ops(logit_map) + self.down.attn.bias
        attn = self.down.attention(
            logits, ops.cells, self.dev_gen, cfg.logit_mask if train else 0.0
        )
        down = ops.pool(both.view(hf, wf, -1), attn)  # blurred, jittered, pooled views
        mag_d, out = down[:, :1], down[:, 1:]
        log_s = self.scale_net(targets.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        scales = torch.exp(log_s + 0.1).clamp_min(1e-4)
        rec = ((out - targets).square() / (2 * scales**2) + scales.log()).mean()
        loss = rec
        terms = {"rec": float(rec.detach())}
        if cfg.mag_weight > 0:
            mag = (mag_d - targets.norm(dim=1, keepdim=True)).square().mean()
            loss = loss + cfg.mag_weight * mag
            terms["mag"] = float(mag.detach())
        if cfg.mag_tv_weight > 0:
            tv = (
                (hr_mag[..., 1:, :] - hr_mag[..., :-1, :]).square().sum()
                + (hr_mag[..., 1:] - hr_mag[..., :-1]).square().sum()
            ) / hr_mag.numel()
            loss = loss + cfg.mag_tv_weight * tv
            terms["mag_tv"] = float(tv.detach())
        if cfg.blur_pin > 0:
            pin = (gaussian_blur5(hr) - hr).square().mean()
            loss = loss + cfg.blur_pin * pin
            terms["blur_pin"] = float(pin.detach())
        # feature error of the downsampled prediction (PCA space), for reports
        terms["mse"] = float((out - targets).square().mean().detach())
        return loss, terms

    def step(self) -> float:
        """One optimiser step on ``cfg.batch`` random views; returns the loss."""
        if not self._built:
            self.build()
        with torch.inference_mode(False), torch.enable_grad():
            return self._step()

    def _step(self) -> float:
        cfg = self.cfg
        for g in self.optim.param_groups:
            g["lr"] = self.lr_at(self.step_count)
        idx = torch.randint(0, self.targets.shape[0], (cfg.batch,), generator=self.gen).tolist()
        ops = self.view_ops([self.jitters[i] for i in idx], random_windows=True)
        loss, _ = self.objective(ops, self.targets[idx], train=True)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.step_count += 1
        value = float(loss.detach())
        self.losses.append(value)
        return value

    @torch.no_grad()
    def evaluate(self, jitters: list[Jitter], raw_targets: torch.Tensor, chunk: int = 8) -> dict:
        """Eval-mode loss (no dropout) on held-out views with backbone features
        ``raw_targets`` (V, C, h, w); returns the loss and its terms (view-averaged)."""
        targets = self.project(raw_targets.to(self.device))
        acc: dict[str, float] = {}
        n = len(jitters)
        for a in range(0, n, chunk):
            js = jitters[a : a + chunk]
            loss, terms = self.objective(self.view_ops(js), targets[a : a + chunk], train=False)
            terms["loss"] = float(loss)
            for k, v in terms.items():
                acc[k] = acc.get(k, 0.0) + v * len(js) / n
        return acc

    def result(self) -> ImplicitFeatures:
        """The fit so far as :class:`ImplicitFeatures` (a copy of the network)."""
        info = {
            "backbone": self.bb.name,
            "backbone_weights": str(self.bb.weights),
            "stride": int(self.bb.patch_size),
            "use_norm": self.use_norm,
            "seed": self.seed,
            "config": self.cfg.to_dict(),
            "steps_done": self.step_count,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": [round(v, 6) for v in self.losses[:: max(1, len(self.losses) // 200)]],
        }
        net = ImplicitNet(self.cfg.n_freqs, int(self.components.shape[0])).to(self.device)
        net.load_state_dict(self.net.state_dict())
        return ImplicitFeatures(
            net,
            self.components.clone(),
            self.mean.clone(),
            self.colour_range.clone(),
            self.content.clone(),
            self.fit_size,
            self.content_size,
            self.original_size,
            info,
        )


def as_image_tensor(image: Any) -> torch.Tensor:
    """(1, 3, H, W) normalised tensor from a tensor or anything prepare_image takes."""
    if isinstance(image, torch.Tensor):
        x = image
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ImageError(
                "a tensor image must be ImageNet-normalised (3, H, W) or (1, 3, H, W), "
                f"got shape {tuple(image.shape)}; pass numpy arrays for raw images"
            )
        if not torch.is_floating_point(x) or not torch.isfinite(x).all():
            raise ImageError("a tensor image must be floating point and finite")
        return x.float()
    x01, _ = prepare_image(image)
    return normalize(torch.from_numpy(x01)[None])


def iter_fit_implicit(
    image: Any,
    backbone: str | Backbone,
    *,
    settings: str | ImplicitConfig = "fast",
    steps: int | None = None,
    views: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    weights: str = "pretrained",
    use_norm: bool = True,
    progress_every: int = 1,
    **options: Any,
) -> Generator[Progress, None, ImplicitFeatures]:
    """Fit FeatUp's implicit model to one image, yielding :class:`Progress` events.

    Parameters
    ----------
    image
        A numpy/dask image (anything :func:`~napari_featup.prepare_image` takes) or an
        ImageNet-normalised tensor (3, H, W) / (1, 3, H, W).
    backbone
        A :class:`Backbone`, or a name loaded with ``weights`` on ``device``.
    settings
        ``"fast"``, ``"preview"`` (a quick look), ``"featup"`` (FeatUp's settings) or an
        :class:`ImplicitConfig`; ``steps``, ``views``, ``lr`` and ``**options`` (any
        :class:`ImplicitConfig` field) override it.
    seed
        Makes the fit reproducible on a given device.
    use_norm
        Fit to channel-normed backbone features. This package's default, not FeatUp's
        (whose implicit config has ``use_norm: false``); docs/implicit.md says why.
    progress_every
        Yield an event every this many optimiser steps.

    Returns
    -------
    ImplicitFeatures
        As the generator's return value. Events count views featurised, then steps
        (``total = views + steps``), with ``stage`` ``"views"`` then ``"fit"`` and
        ``loss`` NaN until the first step. Stop iterating to cancel.
    """
    cfg = resolve_config(settings, steps=steps, views=views, lr=lr, **options)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UpsamplerError(f"seed must be an integer, got {seed!r}")
    x = as_image_tensor(image)
    if isinstance(backbone, Backbone):
        bb = backbone
    elif isinstance(backbone, str):
        bb = load_backbone(backbone, weights=weights, device=device)
    else:
        raise BackboneError(f"backbone must be a name or a Backbone, got {type(backbone).__name__}")
    bb.check_size(*x.shape[-2:])
    fitter = ImplicitFitter(x, bb, cfg, seed=int(seed), use_norm=use_norm)
    total = cfg.views + cfg.steps
    nan = float("nan")
    yield Progress(0, total, "featurising jittered views", stage="views", loss=nan)
    for done in fitter.iter_views():
        msg = f"featurising jittered views ({done}/{cfg.views})"
        yield Progress(done, total, msg, stage="views", loss=nan)
    fitter.build()
    every = max(1, int(progress_every))
    for i in range(cfg.steps):
        loss = fitter.step()
        if (i + 1) % every == 0 or i + 1 == cfg.steps:
            msg = f"fitting step {i + 1}/{cfg.steps}, loss {loss:.4f}"
            yield Progress(cfg.views + i + 1, total, msg, stage="fit", loss=loss)
    return fitter.result()


def fit_implicit(
    image: Any,
    backbone: str | Backbone,
    *,
    progress: Callable[[Progress], Any] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> ImplicitFeatures:
    """Run :func:`iter_fit_implicit` to the end (same arguments) with
    :func:`~napari_featup.drive`.

    ``progress`` is called with each :class:`Progress`; ``should_cancel`` is polled
    after each and raises :class:`~napari_featup.Cancelled` when it returns True.
    """
    return drive(iter_fit_implicit(image, backbone, **kwargs), progress, should_cancel)


__all__ = [
    "FitProgress",
    "ImplicitFitter",
    "as_image_tensor",
    "fit_implicit",
    "fit_size_for",
    "iter_fit_implicit",
]
