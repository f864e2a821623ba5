"""Zero-shot label maps: the best prompt at every pixel, or "none of these"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NONE_LABEL = "none of these"

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tol's muted), RGBA in [0, 1];
# label i + 1 gets _PALETTE[i % len]
_PALETTE = np.array(
    [
        (230, 159, 0),
        (86, 180, 233),
        (0, 158, 115),
        (240, 228, 66),
        (0, 114, 178),
        (213, 94, 0),
        (204, 121, 167),
        (136, 34, 85),
        (68, 170, 153),
        (153, 153, 51),
        (221, 204, 119),
        (51, 34, 136),
    ],
    np.float32,
)


def label_colour(label: int) -> tuple[float, float, float, float]:
    """RGBA in [0, 1] of ``label`` (0, "none of these", is transparent)."""
    if label <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    r, g, b = _PALETTE[(label - 1) % len(_PALETTE)] / 255.0
    return (float(r), float(g), float(b), 1.0)


@dataclass
class LegendEntry:
    """One label of a label map: its value, prompt, colour and share of the pixels."""

    label: int
    prompt: str
    colour: tuple[float, float, float, float]
    fraction: float

    def to_dict(self) -> dict:
        """Plain values for metadata."""
        return {
            "label": self.label,
            "prompt": self.prompt,
            "colour": list(self.colour),
            "fraction": self.fraction,
        }


def label_map(
    similarities: np.ndarray, prompts: Sequence[str], threshold: float | None = None
) -> tuple[np.ndarray, list[LegendEntry]]:
    """Label each pixel with the prompt it is most similar to.

    Label ``i + 1`` marks pixels where prompt ``i`` is the most similar; label 0 ("none of
    these") marks pixels whose best similarity is below ``threshold``. Ties go to the
    earlier prompt.

    Parameters
    ----------
    similarities : numpy.ndarray
        (N, ...) similarity maps, one per prompt.
    prompts : sequence of str
        The N prompts, in order.
    threshold : float, optional
        Pixels whose best similarity is below it get label 0 (None: every pixel gets a
        prompt).

    Returns
    -------
    labels : numpy.ndarray
        (...) uint8 for fewer than 256 prompts, else uint16.
    legend : list of LegendEntry
        One entry per label, label 0 first.
    """
    sims = np.asarray(similarities, dtype=np.float32)
    prompts = [str(p) for p in prompts]
    if sims.ndim < 2 or sims.shape[0] != len(prompts) or not prompts:
        raise ValueError(
            f"expected (N, ...) similarity maps for {len(prompts)} prompts, got {sims.shape}"
        )
    dtype = np.uint8 if len(prompts) < 256 else np.uint16
    labels = (sims.argmax(axis=0) + 1).astype(dtype)
    if threshold is not None:
        labels[sims.max(axis=0) < float(threshold)] = 0
    counts = np.bincount(labels.ravel(), minlength=len(prompts) + 1)
    total = max(1, labels.size)
    names = [NONE_LABEL] + prompts
    legend = [
        LegendEntry(i, names[i], label_colour(i), float(counts[i]) / total)
        for i in range(len(names))
    ]
    return labels, legend


def legend_colormap(legend: Sequence[LegendEntry]) -> dict:
    """``{label: RGBA}`` for napari's Labels ``colormap`` (a direct colormap), with
    ``None`` (labels not in the legend) transparent."""
    cmap: dict = {e.label: e.colour for e in legend}
    cmap[None] = (0.0, 0.0, 0.0, 0.0)
    return cmap
