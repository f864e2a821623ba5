"""Estimates before a run, and the pre-run check of weights (no Qt)."""

from __future__ import annotations

import time

import pytest

from napari_featup.errors import WeightsUnavailableError
from napari_featup.session import availability, estimate
from napari_featup.session.messages import weights_advice


def test_implicit_on_cpu_is_flagged_with_the_preview_tip():
    fast = estimate.estimate_run("dinov2", "featup-implicit", (512, 512), device="cpu")
    assert fast.long and "settings=preview takes about" in fast.text()
    preview = estimate.estimate_run(
        "dinov2", "featup-implicit", (512, 512), device="cpu", options={"settings": "preview"}
    )
    assert preview.seconds * 5 < fast.seconds and "takes about" not in preview.text()
    featup = estimate.estimate_run(
        "dinov2", "featup-implicit", (512, 512), device="cpu", options={"settings": "featup"}
    )
    assert featup.seconds > fast.seconds
    gpu = estimate.estimate_run("dinov2", "featup-implicit", (512, 512), device="cuda:0")
    assert gpu.seconds < fast.seconds and "preview" not in gpu.text()
    bilinear = estimate.estimate_run("dinov2", "bilinear", (512, 512), device="cpu")
    assert not bilinear.long and bilinear.memory_bytes < fast.memory_bytes
    big = estimate.estimate_run("dinov2", "bilinear", (2048, 2048), device="cpu", planes=3)
    assert big.seconds > 4 * bilinear.seconds and big.memory_bytes > bilinear.memory_bytes


def test_calibration_sets_the_speed(monkeypatch):
    monkeypatch.setattr(estimate, "_calibrated_gflops", {})
    before = estimate.estimate_run("dinov2", "jbu-classic", (512, 512), device="cpu")
    assert not before.calibrated
    slow = estimate.backbone_gflop("dinov2", (224, 224)) / estimate.REFERENCE_GFLOPS * 10
    estimate.calibrate("cpu", "dinov2", (224, 224), slow)  # a machine 10x slower
    after = estimate.estimate_run("dinov2", "jbu-classic", (512, 512), device="cpu")
    assert after.calibrated and after.seconds == pytest.approx(10 * before.seconds, rel=0.01)


def test_unreachable_server_is_reported_fast():
    t0 = time.perf_counter()
    why = availability.unreachable("http://127.0.0.1:9/x", timeout=2)
    assert why is not None and "127.0.0.1" in why and time.perf_counter() - t0 < 3


def test_weights_check_names_whose_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf

    import napari_featup.upsamplers.featup_jbu.checkpoints as jbu

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(jbu, "_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(WeightsUnavailableError) as info:
        availability.check_weights("vit", "pretrained")
    assert info.value.part == "backbone" and "napari-featup download vit" in str(info.value)
    with pytest.raises(WeightsUnavailableError) as info:
        availability.check_weights("dinov2", "random", "featup-jbu")
    assert info.value.part == "upsampler"
    cli = weights_advice(info.value, info.value.part, "cli")
    assert "--upsampler-weights PATH" in cli and "--upsampler-weights random" in cli
    widget = weights_advice(info.value, info.value.part, "widget")
    assert "Upsampler weights: file…" in widget and "Upsampler weights: random" in widget
    # nothing to fetch: random weights, a given checkpoint, or the hub marked offline
    availability.check_weights("dinov2", "random", "featup-jbu", upsampler_weights="random")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)  # the library fails at once itself
    availability.check_weights("vit", "pretrained")
