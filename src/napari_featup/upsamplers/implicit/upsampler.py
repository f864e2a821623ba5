"""FeatUp's implicit upsampler in the pipeline: fit per image, then render any rows.

``iter_fit(lowres, image)`` fits the implicit model (:mod:`.fit`) to the image
(yielding progress, cancelled by stopping iteration); ``upsample(lowres, image, rows)``
renders only the requested rows (the model is per pixel, so bands are exact and need
no halo). Not channel-linear. Memory: the fit runs at most at ``max_fit_pixels``
(default 2 x 224 x 224 px; larger images are fitted downscaled, aspect kept, and
rendered at full size with full-resolution colours); rendering works in row tiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ...backbones import Backbone, load_backbone
from ...errors import ImageError, UpsamplerError
from ...progress import Progress
from .._registry import register_upsampler
from ..base import Upsampler
from .config import ImplicitConfig, resolve_config
from .features import ImplicitFeatures
from .fit import iter_fit_implicit


@dataclass(frozen=True)
class ImplicitOptions:
    """Options of ``featup-implicit``: a preset and overrides of its fields.

    ``settings`` names a preset of :data:`~.config.SETTINGS` (``"fast"``, ``"preview"``,
    ``"featup"``); ``seed`` seeds the fit. Every other field is the
    :class:`~.config.ImplicitConfig` field of the same name, and None (the default)
    keeps the preset's value. Values are checked when the options are made
    (:class:`UpsamplerError` naming the field).
    """

    settings: str = "fast"
    seed: int = 0
    views: int | None = None
    steps: int | None = None
    batch: int | None = None
    lr: float | None = None
    schedule: str | None = None
    lr_floor: float | None = None
    warmup: int | None = None
    n_freqs: int | None = None
    proj_dim: int | None = None
    pca_views: int | None = None
    max_pad: int | None = None
    max_zoom: float | None = None
    flips: bool | None = None
    dropout: float | None = None
    attn_dropout: float | None = None
    logit_mask: float | None = None
    mag_weight: float | None = None
    mag_tv_weight: float | None = None
    blur_pin: float | None = None
    cells: int | None = None
    view_batch: int | None = None
    max_fit_pixels: int | None = None

    def __post_init__(self) -> None:
        self.config()  # range checks now, so a bad value fails before any work

    def overrides(self) -> dict[str, Any]:
        """The :class:`ImplicitConfig` fields given (not None)."""
        opts = dataclasses.asdict(self)
        del opts["settings"], opts["seed"]
        return {k: v for k, v in opts.items() if v is not None}

    def config(self) -> ImplicitConfig:
        """The preset with the overrides applied, checked."""
        return resolve_config(self.settings, **self.overrides())


@register_upsampler(
    "featup-implicit",
    description="FeatUp's implicit model, fitted to each image (slow: seconds to minutes)",
    options=ImplicitOptions,
    # ours, not FeatUp's (its implicit config says use_norm: false): docs/implicit.md
    default_use_norm=True,
)
class ImplicitUpsampler(Upsampler):
    """FeatUp's per-image implicit model (fitted in :meth:`iter_fit`)."""

    linear = False
    tileable = True
    fits_per_image = True
    factored = True

    def __init__(
        self, backbone: Backbone, config: ImplicitConfig, seed: int = 0, use_norm: bool = True
    ):
        super().__init__()
        # not a registered submodule: the upsampler's state is the fit, not the backbone
        self.__dict__["backbone"] = backbone
        self.config = config
        self.seed = int(seed)
        self.use_norm = bool(use_norm)
        self.features: ImplicitFeatures | None = None
        self._fitted_on: tuple | None = None

    @classmethod
    def build(
        cls,
        options: ImplicitOptions,
        *,
        backbone: Backbone | str | None = None,
        use_norm: bool = True,
        weights: Any = None,
        device: torch.device | str | None = None,
    ) -> ImplicitUpsampler:
        """Make it from registry options; ``backbone`` (an object or a name) is required
        and ``weights`` refused (the model is fitted to each image)."""
        if weights is not None:
            raise UpsamplerError(
                "featup-implicit has no pretrained weights (it is fitted to each image); "
                "do not pass weights=. Load a saved fit with ImplicitFeatures.load(path)"
            )
        if isinstance(backbone, str):
            backbone = load_backbone(backbone, device=device or "auto")
        if not isinstance(backbone, Backbone):
            raise UpsamplerError(
                "featup-implicit needs the backbone it fits to: pass backbone=<Backbone> "
                f"(from load_backbone) or a backbone name, got {backbone!r}"
            )
        return cls(backbone, options.config(), seed=options.seed, use_norm=use_norm)

    def _key(self, lowres: torch.Tensor, image: torch.Tensor) -> tuple:
        return (
            tuple(image.shape),
            float(image.sum()),
            float(image[..., ::7, ::5].square().sum()),
            bool(self.use_norm),
        )

    def _check(self, lowres: torch.Tensor, image: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ImageError(
                f"featup-implicit takes one (1, 3, H, W) image, got {tuple(image.shape)}"
            )
        if lowres.ndim != 4 or lowres.shape[0] != 1 or lowres.shape[1] != self.backbone.dim:
            raise UpsamplerError(
                f"featup-implicit was made for backbone {self.backbone.name!r} "
                f"({self.backbone.dim} channels); got low-res features of shape "
                f"{tuple(lowres.shape)}"
            )

    def iter_fit(self, lowres: torch.Tensor, image: torch.Tensor) -> Iterator[Progress]:
        """Fit to ``image`` (1, 3, H, W), normalised and stride-padded, yielding
        :class:`Progress` with the loss. Refitting the same image is skipped."""
        self._check(lowres, image)
        key = self._key(lowres, image)
        if self.features is not None and self._fitted_on == key:
            return
        self.features = None
        gen = iter_fit_implicit(
            image,
            self.backbone,
            settings=self.config,
            seed=self.seed,
            use_norm=self.use_norm,
        )
        try:
            while True:
                try:
                    ev = next(gen)
                except StopIteration as stop:
                    self.features = stop.value
                    self._fitted_on = key
                    return
                yield ev._replace(message=f"implicit fit: {ev.message}", stage="fit")
        finally:
            gen.close()  # a consumer that stopped early cancels the fit here

    def _fitted(self, lowres: torch.Tensor, image: torch.Tensor) -> ImplicitFeatures:
        self._check(lowres, image)
        if self.features is None or self._fitted_on != self._key(lowres, image):
            for _ in self.iter_fit(lowres, image):  # fit now (no progress to report)
                pass
        return self.features

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The whole rendered output (fits first if needed); see :meth:`upsample`."""
        return self.upsample(lowres, image)

    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """Rendered features (1, C, R, W) on ``image``'s pixel grid, only ``rows``."""
        feats = self._fitted(lowres, image)
        size = tuple(int(v) for v in image.shape[-2:])
        return feats.render(size, rows=rows, image=image.float())

    def factors(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Z (1, P, R, W) PCA coordinates, A (C, P), m (C,)): output = A Z + m."""
        feats = self._fitted(lowres, image)
        size = tuple(int(v) for v in image.shape[-2:])
        z = feats.render(size, rows=rows, image=image.float(), space="pca")
        return z, feats.components.T, feats.mean

    def extra_metadata(self) -> dict:
        """The resolved settings and seed, and the fit's size, steps and final loss."""
        info = {"settings": self.config.to_dict(), "seed": self.seed}
        if self.features is not None:
            f = self.features
            info.update(
                {
                    "fit_size": list(f.fit_size),
                    "fit_content_size": list(f.content_size),
                    "steps_done": f.info.get("steps_done"),
                    "final_loss": f.info.get("final_loss"),
                }
            )
        return info


__all__ = ["ImplicitOptions", "ImplicitUpsampler"]
