"""FeatUp's implicit upsampler in the pipeline: fit per image, then render any rows.

``iter_fit(lowres, image)`` fits :mod:`napari_featup.implicit`'s model to the image
(yielding progress, cancelled by stopping iteration); ``upsample(lowres, image, rows)``
renders only the requested rows (the model is per pixel, so bands are exact and need
no halo). Not channel-linear. Memory: the fit runs at most at ``max_fit_pixels``
(default 2 x 224 x 224 px; larger images are fitted downscaled, aspect kept, and
rendered at full size with full-resolution colours); rendering works in row tiles.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

import torch

from ..backbones import Backbone, load_backbone
from ..errors import UpsamplerError
from ..implicit import ImplicitConfig, ImplicitFeatures, iter_fit_implicit, resolve_config
from ..progress import Progress
from ._registry import register_upsampler
from .base import Upsampler

_CONFIG_TYPES = typing.get_type_hints(ImplicitConfig)
#: ``settings`` names a preset; every other field overrides it (None: the preset's value)
ImplicitOptions = dataclasses.make_dataclass(
    "ImplicitOptions",
    [
        ("settings", str, dataclasses.field(default="fast")),
        ("seed", int, dataclasses.field(default=0)),
    ]
    + [
        (f.name, _CONFIG_TYPES[f.name] | None, dataclasses.field(default=None))
        for f in dataclasses.fields(ImplicitConfig)
    ],
    frozen=True,
)


@register_upsampler(
    "featup-implicit",
    description="FeatUp's implicit model, fitted to each image (slow: seconds to minutes)",
    options=ImplicitOptions,
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
    def build(cls, options, *, backbone=None, use_norm=True, weights=None, device=None):
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
        opts = dataclasses.asdict(options)
        settings, seed = opts.pop("settings"), opts.pop("seed")
        config = resolve_config(settings, **opts)
        return cls(backbone, config, seed=seed, use_norm=use_norm)

    def _key(self, lowres: torch.Tensor, image: torch.Tensor) -> tuple:
        return (
            tuple(image.shape),
            float(image.sum()),
            float(image[..., ::7, ::5].square().sum()),
            bool(self.use_norm),
        )

    def _check(self, lowres: torch.Tensor, image: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(
                f"featup-implicit takes one (1, 3, H, W) image, got {tuple(image.shape)}"
            )
        if lowres.ndim != 4 or lowres.shape[0] != 1 or lowres.shape[1] != self.backbone.dim:
            raise ValueError(
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
                ev = next(gen)
                stage = (
                    "featurising jittered views"
                    if ev.loss != ev.loss
                    else f"fitting, loss {ev.loss:.4f}"
                )
                yield Progress(
                    ev.done, ev.total, f"implicit fit: {stage}", stage="fit", loss=ev.loss
                )
        except StopIteration as stop:
            self.features = stop.value
            self._fitted_on = key
        finally:
            gen.close()

    def _fitted(self, lowres: torch.Tensor, image: torch.Tensor) -> ImplicitFeatures:
        self._check(lowres, image)
        if self.features is None or self._fitted_on != self._key(lowres, image):
            for _ in self.iter_fit(lowres, image):  # fit now (no progress to report)
                pass
        return self.features

    def forward(self, lowres: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.upsample(lowres, image)

    def upsample(
        self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None
    ) -> torch.Tensor:
        """Rendered features (1, C, R, W) on ``image``'s pixel grid, only ``rows``."""
        feats = self._fitted(lowres, image)
        size = tuple(int(v) for v in image.shape[-2:])
        return feats.render(size, rows=rows, image=image.float())

    def factors(self, lowres: torch.Tensor, image: torch.Tensor, rows: slice | None = None):
        """(Z (1, P, R, W) PCA coordinates, A (C, P), m (C,)): output = A Z + m."""
        feats = self._fitted(lowres, image)
        size = tuple(int(v) for v in image.shape[-2:])
        z = feats.render(size, rows=rows, image=image.float(), space="pca")
        return z, feats.components.T, feats.mean

    def extra_metadata(self) -> dict:
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
