"""Per-image fitted anisotropic guided kernels ("Upsample Anything"-style, Seo et al. 2025).

Every low-res cell q gets its own kernel: an anisotropic spatial Gaussian (standard
deviations ``sigma_x``, ``sigma_y`` along and across the direction ``theta``) times a range
Gaussian of width ``sigma_r`` on the colour difference to the cell's mean colour (see
``_guided.py`` for the exact form). The parameters are fitted to the image alone: the
cell-mean colours, splatted with these kernels, should reconstruct the full-resolution
image (L1 loss, Adam). The fitted kernels are then applied to the features, so the
upsampler works with any backbone, needs no weights and is channel-linear.

The fit samples ``samples`` random pixel positions per cell and step (the same positions
in every cell), so a step costs O(cells x taps x samples) whatever the image size, and the
random stream is seeded: results are deterministic for a given ``seed``.

Units: ``sigma_spatial`` (the initial spatial sigmas) and ``radius`` in low-res cells,
``sigma_range`` (the initial range sigma) a Euclidean RGB distance on colours in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...progress import Progress
from .._registry import register_upsampler
from ..base import Kernels, Upsampler
from .engine import (
    GuidedKernels,
    block_logits,
    cell_mean,
    cell_positions,
    check_grid,
    guidance_colour,
    positive_option,
    spatial_coefficients,
    unfold_cells,
)


@dataclass(frozen=True)
class GuidedFitOptions:
    """Fit length and rate, kernel support and initial widths (see the module docstring)."""

    steps: int = 50
    lr: float = 0.01
    radius: int = 2
    sigma_spatial: float = 1.0
    sigma_range: float = 0.05
    samples: int = 32
    seed: int = 0
    consistency: int = 5


DEFAULTS = dataclasses.asdict(GuidedFitOptions())
# Fitted sigmas are kept in a sane range (cells / RGB distance): kernels narrower than a
# tenth of a cell or a 1e-3 colour step only add noise.
SPATIAL_LIMITS = (0.1, 8.0)
RANGE_LIMITS = (1e-3, 2.0)


class FittedParams:
    """Fitted kernel parameters (B, h, w) each, and the guidance they were fitted to."""

    def __init__(self, raw: torch.Tensor, colour: torch.Tensor, grid: tuple[int, int], loss: float):
        self.raw = raw.detach()
        self.colour = colour.detach()
        self.grid = tuple(grid)
        self.loss = loss

    def matches(self, colour: torch.Tensor, grid: tuple[int, int]) -> bool:
        """Whether these parameters were fitted to this guidance colour and grid."""
        return (
            tuple(grid) == self.grid
            and colour.shape == self.colour.shape
            and colour.device == self.colour.device
            and bool(torch.equal(colour, self.colour))
        )


def _coefficients(
    raw: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 4, h, w) raw parameters -> a, b, c, rho maps (B, h, w)."""
    lo, hi = (math.log(v) for v in SPATIAL_LIMITS)
    sx = raw[:, 0].clamp(lo, hi).exp()
    sy = raw[:, 1].clamp(lo, hi).exp()
    lo, hi = (math.log(v) for v in RANGE_LIMITS)
    sr = raw[:, 3].clamp(lo, hi).exp()
    a, b, c = spatial_coefficients(sy, sx, raw[:, 2])
    return a, b, c, 0.5 / sr.square()


@register_upsampler(
    "guided-fit",
    description="per-image fitted anisotropic guided kernels (no weights, any backbone)",
    options=GuidedFitOptions,
)
class GuidedFit(Upsampler):
    """Guided kernels fitted per image (see the module docstring)."""

    linear = True
    tileable = True
    fits_per_image = True

    def __init__(self, **options):
        super().__init__()
        o = dataclasses.asdict(GuidedFitOptions(**options))
        self.steps = positive_option("steps", o["steps"], self.name, integer=True, allow_zero=True)
        self.lr = positive_option("lr", o["lr"], self.name)
        self.radius = positive_option("radius", o["radius"], self.name, integer=True)
        self.sigma_spatial = positive_option("sigma_spatial", o["sigma_spatial"], self.name)
        self.sigma_range = positive_option("sigma_range", o["sigma_range"], self.name)
        self.samples = positive_option("samples", o["samples"], self.name, integer=True)
        self.seed = positive_option("seed", o["seed"], self.name, integer=True, allow_zero=True)
        self.consistency = positive_option(
            "consistency", o["consistency"], self.name, integer=True, allow_zero=True
        )
        self.fitted: FittedParams | None = None

    # -- fitting -------------------------------------------------------------------
    def _initial(self, batch: int, grid: tuple[int, int], device) -> torch.Tensor:
        raw = torch.empty((batch, 4) + tuple(grid), device=device)
        raw[:, 0:2] = math.log(self.sigma_spatial)
        raw[:, 2] = 0.0
        raw[:, 3] = math.log(self.sigma_range)
        return raw

    def iter_fit(self, lowres: torch.Tensor, image: torch.Tensor) -> Iterator[Progress]:
        """Fit the kernels to ``image`` for ``lowres``'s grid, yielding after each step.

        The result is kept only when the fit runs to the end; stopping the iteration
        (cancel) leaves the previous state untouched.
        """
        grid = (int(lowres.shape[-2]), int(lowres.shape[-1]))
        colour = guidance_colour(image.detach().float())
        check_grid(grid, tuple(colour.shape[-2:]))
        yield from self._fit(colour, grid)

    def _fit(self, colour: torch.Tensor, grid: tuple[int, int]) -> Iterator[Progress]:
        # Grad mode is thread-local state: it is switched on per step, never across a
        # yield, and inference mode is lifted so callers may run under inference_mode.
        with torch.inference_mode(False):
            state = self._setup(colour.clone(), grid)
        loss_value = float("nan")
        for step in range(self.steps):
            with torch.inference_mode(False), torch.enable_grad():
                loss_value = self._step(state)
            yield Progress(
                step + 1,
                self.steps,
                f"fitting guided kernels: L1 {loss_value:.4f}",
                stage="fit",
                loss=loss_value,
            )
        self.fitted = FittedParams(state["raw"], colour, grid, loss_value)

    def _setup(self, colour: torch.Tensor, grid: tuple[int, int]) -> dict:
        B, _, H, W = colour.shape
        h, w = grid
        sy, sx = max(1, round(H / h)), max(1, round(W / w))
        # The fit needs whole cells; other sizes are fitted on a resampled copy (the
        # parameters are in cell units, so they carry over).
        fit_img = (
            colour
            if (h * sy, w * sx) == (H, W)
            else F.interpolate(
                colour, size=(h * sy, w * sx), mode="bilinear", align_corners=False, antialias=True
            )
        )
        mean = cell_mean(fit_img, grid)
        r = self.radius
        ones = torch.ones((1, 1, h, w), device=colour.device)
        raw = self._initial(B, grid, colour.device).requires_grad_(True)
        return {
            "grid": grid,
            "sy": sy,
            "sx": sx,
            "mean": mean,
            "raw": raw,
            "blocks": fit_img.reshape(B, 3, h, sy, w, sx)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(B, h, w, 3, sy * sx),
            "valid": unfold_cells(ones, 0, h, r)[..., 0, :] > 0,
            "mean_nb": unfold_cells(mean, 0, h, r),  # (B, h, w, 3, taps)
            "opt": torch.optim.Adam([raw], lr=self.lr),
            "gen": torch.Generator(device="cpu").manual_seed(self.seed),
        }

    def _step(self, st: dict) -> float:
        """One Adam step on the L1 reconstruction of ``samples`` pixels per cell."""
        sy, sx, r, h = st["sy"], st["sx"], self.radius, st["grid"][0]
        n = min(self.samples, sy * sx)
        idx = torch.randperm(sy * sx, generator=st["gen"])[:n].to(st["raw"].device)
        fy, fx = cell_positions(sy, sx, idx // sx, idx % sx)
        pix = st["blocks"][..., idx]  # (B, h, w, 3, n)
        a, b, c, rho = _coefficients(st["raw"])
        table = unfold_cells(torch.cat([torch.stack([a, b, c, rho], 1), st["mean"]], 1), 0, h, r)
        wts = torch.softmax(block_logits(table, st["valid"], pix, fy, fx, r), dim=-2)
        source = st["mean_nb"]  # (B, h, w, 3, taps)
        if self.consistency:
            # Fit what is applied: the same back-projection, with the cell operator
            # estimated from this step's sampled pixels (an unbiased mean over each cell).
            m_op = wts.mean(-1)[..., None, :]  # (B, h, w, 1, taps)
            mean = st["mean"]
            g = mean
            for _ in range(self.consistency):
                mg = (unfold_cells(g, 0, h, r) * m_op).sum(-1).permute(0, 3, 1, 2)
                g = g + (mean - mg)
            source = unfold_cells(g, 0, h, r)
        loss = (source @ wts - pix).abs().mean()
        st["opt"].zero_grad(set_to_none=True)
        loss.backward()
        st["opt"].step()
        return float(loss.detach())

    def _fitted_for(self, colour: torch.Tensor, grid: tuple[int, int]) -> FittedParams:
        if self.fitted is None or not self.fitted.matches(colour, grid):
            for _ in self._fit(colour, grid):
                pass
        return self.fitted

    # -- applying ------------------------------------------------------------------
    def kernels(self, image: torch.Tensor, grid: tuple[int, int]) -> Kernels:
        """The fitted kernels for ``image``; fits first if this image was not fitted."""
        colour = guidance_colour(image.detach().float())
        grid = (int(grid[0]), int(grid[1]))
        check_grid(grid, tuple(colour.shape[-2:]))
        with torch.no_grad():
            fitted = self._fitted_for(colour, grid)
            a, b, c, rho = _coefficients(fitted.raw)
        return GuidedKernels(
            colour, grid, a, b, c, rho, radius=self.radius, consistency=self.consistency
        )

    def fitted_sigmas(self) -> dict[str, torch.Tensor]:
        """The fitted parameters as (B, h, w) maps: sigma_x, sigma_y (cells), theta
        (radians), sigma_range (RGB distance in [0, 1])."""
        if self.fitted is None:
            raise RuntimeError(
                "guided-fit has not been fitted yet; call iter_fit or upsample first"
            )
        raw = self.fitted.raw
        return {
            "sigma_x": raw[:, 0].clamp(*(math.log(v) for v in SPATIAL_LIMITS)).exp(),
            "sigma_y": raw[:, 1].clamp(*(math.log(v) for v in SPATIAL_LIMITS)).exp(),
            "theta": raw[:, 2].clone(),
            "sigma_range": raw[:, 3].clamp(*(math.log(v) for v in RANGE_LIMITS)).exp(),
        }

    def extra_metadata(self) -> dict:
        info = {k: getattr(self, k) for k in DEFAULTS}
        info["units"] = (
            "sigma_spatial, radius: low-res cells; sigma_range: RGB distance, colours in [0, 1]"
        )
        if self.fitted is not None:
            info["final_l1"] = round(self.fitted.loss, 6)
        return info
