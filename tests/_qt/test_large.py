"""Large images in the dock (Xvfb, random weights): the estimate counts tiles, a run
that would not fit or take long is asked about first, and a large image's layers are
multiscale dask arrays computed per chunk (the threshold is lowered so a small image
takes that path)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari.utils.interactions import mouse_press_callbacks  # noqa: E402

from napari_featup import lazy  # noqa: E402
from napari_featup.session import estimate, large  # noqa: E402

from .test_dock import RUN_TIMEOUT_MS, Click, run_and_wait  # noqa: E402


def grey(h=150, w=170):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:h, :w]
    img = 2000 + 1500 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 200, (h, w))
    return np.clip(img, 0, 65535).astype(np.uint16)


def test_estimate_of_a_large_lazy_image(viewer_widget):
    import dask.array as da

    viewer, widget = viewer_widget
    viewer.add_image(da.zeros((5000, 4200), np.uint16, chunks=1024), name="big")
    widget.prerun.update_estimate()
    text = widget.estimate_label.text()
    assert "Large image:" in text and "backbone tiles" in text and "on cpu" in text


def test_asks_before_a_run_beyond_the_memory(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(grey(), name="img")
    asked: list[str] = []
    answer = [False]

    def ask(text):
        asked.append(text)
        return answer[0]

    monkeypatch.setattr(widget, "ask_before_run", ask)
    monkeypatch.setattr(estimate, "available_memory", lambda: 2**20)  # 1 MB free
    assert not widget.run()
    assert len(asked) == 1 and "more than the" in asked[0] and "Start it anyway" in asked[0]
    assert "declined" in widget.status.text() and "img PCA bilinear" not in viewer.layers
    answer[0] = True
    assert run_and_wait(qtbot, widget) == "done" and len(asked) == 2
    monkeypatch.setattr(estimate, "available_memory", lambda: 2**40)
    assert run_and_wait(qtbot, widget) == "done" and len(asked) == 2  # fits: not asked


def test_large_image_layers_are_dask_per_chunk(qtbot, viewer_widget, monkeypatch, tmp_path):
    viewer, widget = viewer_widget
    monkeypatch.setattr(large, "LARGE_PIXELS", 100 * 100)
    monkeypatch.setattr(lazy, "OVERVIEW_PX", 64)  # three levels over 150 x 170
    monkeypatch.setattr(large.tempfile, "tempdir", str(tmp_path))
    image = viewer.add_image(grey(), name="img", scale=(0.5, 0.5))
    assert run_and_wait(qtbot, widget) == "done"
    stack = widget.current_stack()
    assert isinstance(stack, large.LargeStack) and stack.directory.exists()
    full = viewer.layers["img PCA bilinear"]
    assert full.multiscale and len(full.data) == 3
    assert type(full.data[0]).__module__.startswith("dask")
    assert full.data[0].shape == (150, 170, 3)
    np.testing.assert_allclose(full.scale, image.scale)
    # the 11 x 13 grid cut to the image in squares of gcd(14, 150) = 2 px
    assert viewer.layers["img PCA low-res"].data.shape[:2] == (75, 85)

    pixel = np.array([60, 80])
    with qtbot.waitSignal(widget.similarity_updated, timeout=RUN_TIMEOUT_MS):
        mouse_press_callbacks(viewer, Click(position=tuple(image.data_to_world(pixel))))
    sim = viewer.layers["img similarity"]
    assert sim.multiscale and type(sim.data[0]).__module__.startswith("dask")
    assert float(np.asarray(sim.data[0][60, 80])) == pytest.approx(1.0, abs=1e-3)
    mask = widget.make_mask(0.9)
    assert mask is not None and mask.multiscale and int(np.asarray(mask.data[0][60, 80])) == 1

    with pytest.raises(ValueError, match="large image"):
        widget.export(tmp_path / "x.featup.npz")
    first = stack.directory
    assert run_and_wait(qtbot, widget) == "done"  # a new run replaces the old store
    assert widget.current_stack() is not stack and not first.exists()


def test_working_scale_and_tiles(qtbot, viewer_widget):
    """Advanced: the working scale (shown in image px and µm) and the tiling reach the
    run; the estimate follows them."""
    viewer, widget = viewer_widget
    image = viewer.add_image(grey(), name="img", scale=(0.325, 0.325))
    panel = widget.settings_panel
    native = estimate.estimate_for(panel.run_settings(), image)
    panel.scale_combo.setCurrentIndex(panel.scale_combo.findData(2))
    panel.update_rows(image)
    assert panel.scale_info.text() == "= 28 px per patch (downsample 2x; 9.1 µm per patch)"
    coarse = estimate.estimate_for(panel.run_settings(), image)
    assert coarse.seconds < native.seconds and coarse.memory_bytes < native.memory_bytes
    assert run_and_wait(qtbot, widget) == "done"
    meta = widget.current_stack().metadata
    assert meta["stride"] == 28 and meta["grid"] == [6, 7]
    low = viewer.layers["img PCA low-res"]  # 28 px cells cut to the image in 2 px squares
    assert low.data.shape[:2] == (75, 85)
    np.testing.assert_allclose(low.scale, [0.325 * 2] * 2)
    panel.tiles_combo.setCurrentIndex(panel.tiles_combo.findData("whole"))
    assert panel.run_settings().extract_kwargs()["tile_size"] is None
    panel.scale_combo.setCurrentIndex(panel.scale_combo.findData(1))
    assert "downsample" not in panel.run_settings().extract_kwargs()
