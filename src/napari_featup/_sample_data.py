"""Sample images from scikit-image's bundled data (no download needed)."""

from __future__ import annotations

from typing import Any


def astronaut() -> list[tuple[Any, dict]]:
    """A 512 x 512 RGB photo (NASA portrait of Eileen Collins)."""
    from skimage import data

    return [(data.astronaut(), {"name": "astronaut", "rgb": True})]


def immunohistochemistry() -> list[tuple[Any, dict]]:
    """A 512 x 512 RGB immunohistochemistry (IHC) micrograph."""
    from skimage import data

    return [(data.immunohistochemistry(), {"name": "immunohistochemistry", "rgb": True})]


def cell() -> list[tuple[Any, dict]]:
    """A 660 x 550 greyscale microscopy image of a cell (phase contrast)."""
    from skimage import data

    return [(data.cell(), {"name": "cell", "colormap": "gray"})]
