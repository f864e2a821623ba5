"""Layer placement (no Qt)."""

from __future__ import annotations

import pytest

from napari_featup.session.layer_data import grid_transform


def test_grid_transform_places_cell_centres():
    s, t = grid_transform(14, [5.0, 2.0, 0.5], [1.0, 10.0, -3.0])
    assert s == [5.0, 28.0, 7.0]
    assert t == [1.0, 10.0 + 6.5 * 2.0, -3.0 + 6.5 * 0.5]
    # cell (i, j) centre in world = pixel (i*14 + 6.5) of the image in world
    i, j = 3, 4
    assert t[-2] + i * s[-2] == pytest.approx(10.0 + (i * 14 + 6.5) * 2.0)
    assert t[-1] + j * s[-1] == pytest.approx(-3.0 + (j * 14 + 6.5) * 0.5)
    with pytest.raises(ValueError, match="same length"):
        grid_transform(14, [1.0], [0.0])
