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


def test_weights_check_covers_every_upsampler_with_published_weights(monkeypatch, tmp_path):
    """AnyUp's and JAFAR's release files are checked like FeatUp's stacks (the class
    says where its published weights live), and JAFAR's choice follows the backbone
    and the ``checkpoint`` option."""
    import napari_featup.upsamplers.anyup as anyup
    import napari_featup.upsamplers.jafar.releases as releases

    monkeypatch.setenv("NAPARI_FEATUP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(anyup.RELEASES, "anyup", "http://127.0.0.1:9/anyup_paper.pth")
    monkeypatch.setattr(releases, "URL", "http://127.0.0.1:9/{file}")
    with pytest.raises(WeightsUnavailableError) as info:
        availability.check_weights("dino16", "random", "anyup")
    assert info.value.part == "upsampler" and "anyup_paper.pth" in str(info.value)
    with pytest.raises(WeightsUnavailableError) as info:
        availability.check_weights("dinov2", "random", "jafar")
    assert "vit_small_patch14_dinov2.lvd142m.pth" in str(info.value)
    # no JAFAR release for dino16 (ViT-S/16): nothing to check, loading says so itself
    availability.check_weights("dino16", "random", "jafar")
    with pytest.raises(WeightsUnavailableError, match="vit_base_patch16_224.dino.pth"):
        availability.check_weights(
            "dino16", "random", "jafar", upsampler_options={"checkpoint": "dino-b16"}
        )
    # a cached release file needs no server
    cached = tmp_path / "cache" / "anyup" / "anyup_paper.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    availability.check_weights("dino16", "random", "anyup")
    availability.check_weights("dino16", "random", "anyup", upsampler_weights="random")


def test_attention_upsamplers_count_their_own_cost(monkeypatch):
    from napari_featup.upsamplers.anyup import AnyUp
    from napari_featup.upsamplers.jafar import JAFAR

    # AnyUp's mean window equals the weights its kernels keep (non-square on purpose)
    size, grid = (70, 45), (5, 3)
    up = AnyUp()
    assert AnyUp.keys_per_pixel(grid, size) * 70 * 45 == pytest.approx(
        up.kernel_entries(size, grid)
    )
    assert JAFAR.keys_per_pixel(grid, size) == 15
    gflop, _, kept = AnyUp.cost(384, (16, 16), (224, 224))
    assert kept == pytest.approx(224 * 224 * AnyUp.keys_per_pixel((16, 16), (224, 224)) * 4)
    # JAFAR over DINOv2's 74 x 74 grid: more weights than output values, so none kept
    assert JAFAR.cost(384, (74, 74), (1036, 1036))[2] is None
    # past memory_mb the encoder is swept (statistics passes): dearer per pixel
    per_px = [AnyUp.cost(384, (16, 16), (s, s))[0] / s**2 for s in (256, 2048)]
    assert per_px[1] > 2 * per_px[0]
    e_any = estimate.estimate_run("dinov2", "anyup", (1024, 1024))
    e_jafar = estimate.estimate_run("dinov2", "jafar", (1024, 1024))
    assert e_jafar.seconds > e_any.seconds  # every key against a window's
    monkeypatch.setattr(AnyUp, "cost", classmethod(lambda cls, *a, **k: (1e6, 0, 0)))
    assert estimate.estimate_run("dinov2", "anyup", (224, 224)).seconds > 1e6 / 1e4
