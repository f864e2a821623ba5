"""Large images in the widget's session: streamed into a store, shown as dask layers
computed per chunk, equal to the in-memory path (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup.progress import Cancelled, drive
from napari_featup.session import estimate, large
from napari_featup.session.geometry import PlaneGeometry
from napari_featup.session.run import RunRequest, iter_run
from napari_featup.session.stack import FeatureStack

EXTRACT = dict(backbone="dinov2", upsampler="bilinear", weights="random", device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:150, :170]
    img = 2000 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 200, (150, 170))
    return np.clip(img, 0, 65535).astype(np.uint16)


def test_which_runs_take_the_large_path():
    big = (5000, 4000)
    assert large.use_large_path(big, "bilinear") and large.use_large_path(big, "featup-jbu")
    assert not large.use_large_path((4096, 4096), "bilinear")  # at the threshold: in memory
    assert not large.use_large_path(big, "featup-implicit")  # fits the whole image
    assert not large.use_large_path(big, "bilinear", leading=(3,))  # stacks stay in memory


def test_large_stack_equals_the_in_memory_stack(image, tmp_path, monkeypatch):
    monkeypatch.setattr(large.tempfile, "tempdir", str(tmp_path))
    geometry = PlaneGeometry((), image.shape, (1.0, 1.0), (0.0, 0.0))
    small = drive(iter_run(RunRequest(image, [()], dict(EXTRACT))))
    assert small.error is None and small.large is None
    stack = FeatureStack("img", geometry, {})
    stack.add_planes(small.results, small.pca, small.colours, small.basis)

    events = []
    out = drive(iter_run(RunRequest(image, [()], dict(EXTRACT), large=True)), events.append)
    assert out.error is None and out.large is not None and not out.results
    assert events[-1].fraction == 1.0 and any("backbone" in e.message for e in events)
    lstack = large.LargeStack("img", geometry, {}, out.large)
    assert lstack.layer_names() == stack.layer_names()

    (low, low_kw, _), (full, full_kw, _) = lstack.layer_data()
    (low0, low0_kw, _), (full0, _, _) = stack.layer_data()
    assert low.shape == low0.shape and low_kw["scale"] == low0_kw["scale"]
    # the store keeps the grid in float16: colours within a few uint8 levels
    assert np.abs(low.astype(int) - low0.astype(int)).mean() < 1.5
    assert type(full[0]).__module__.startswith("dask")  # computed per chunk when shown
    colours = np.asarray(full[0])
    assert colours.shape == image.shape + (3,)
    assert np.abs(colours.astype(int) - full0.astype(int)).mean() < 1.5

    point = [[60.0, 80.0]]
    assert lstack.set_query(point, [[-5.0, 3.0]]) == [[-5.0, 3.0]]  # outside: ignored
    stack.set_query(point)
    want = stack.update_similarity(())
    data, kwargs, _ = lstack.similarity_layer_data(())
    got = np.asarray(data[0])
    assert got.shape == image.shape and kwargs["colormap"] == "inferno"
    assert np.abs(got - want).max() < 2e-2  # float16 grid vs float32
    mask, mask_kw, kind = lstack.mask_layer_data(0.5)
    m = np.asarray(mask[0] if isinstance(mask, list) else mask)
    assert kind == "labels" and ((m == 1) == (got >= 0.5)).all()

    lstack.close()
    assert not lstack.directory.exists()


def test_cancel_removes_the_temporary_store(image, tmp_path, monkeypatch):
    monkeypatch.setattr(large.tempfile, "tempdir", str(tmp_path))
    seen = []

    def should_cancel():
        seen.append(1)
        return len(seen) > 3

    out = None
    with pytest.raises(Cancelled):
        out = drive(
            iter_run(RunRequest(image, [()], dict(EXTRACT), large=True)), None, should_cancel
        )
    assert out is None and not list(tmp_path.glob("napari-featup-large-*"))


def test_estimate_counts_tiles_and_asks_beyond_memory(monkeypatch):
    gflop, tiles, tile = estimate.tiled_gflop("dinov2", (8192, 8192))
    assert tiles == 441 and tile == (518, 518)
    assert gflop == pytest.approx(441 * estimate.backbone_gflop("dinov2", (518, 518)))
    assert gflop < estimate.backbone_gflop("dinov2", (8192, 8192)) / 50  # not n^2 tokens
    est = estimate.estimate_run("dinov2", "bilinear", (8192, 8192), device="cpu")
    assert est.large and "Large image: 441 backbone tiles" in est.text()
    assert est.memory_bytes < 4 * 2**30  # the streaming path: bounded, not 60 B per pixel
    small = estimate.estimate_run("dinov2", "bilinear", (512, 512), device="cpu")
    assert not small.large and not small.needs_confirmation
    monkeypatch.setattr(estimate, "available_memory", lambda: 2**20)
    tight = estimate.estimate_run("dinov2", "bilinear", (512, 512), device="cpu")
    assert tight.exceeds_memory and tight.needs_confirmation
    assert "MORE than the" in tight.text()
    assert "more than the" in estimate.confirmation_text(tight)
    slow = estimate.estimate_run("dinov2", "featup-implicit", (2048, 2048), device="cpu")
    assert slow.seconds > estimate.LONG_SECONDS and slow.needs_confirmation
    assert "takes about" in estimate.confirmation_text(slow)
