"""The bundled sample images."""

from __future__ import annotations


def test_samples_are_bundled():
    from napari_featup import _sample_data as sd

    for fn, shape in [
        (sd.astronaut, (512, 512, 3)),
        (sd.immunohistochemistry, (512, 512, 3)),
        (sd.cell, (660, 550)),
    ]:
        ((data, kwargs),) = fn()
        assert data.shape == shape and kwargs["name"]
