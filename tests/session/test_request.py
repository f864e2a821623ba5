"""Run settings -> a checked run request, without a viewer (no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_featup.errors import FeatUpError, SettingsError
from napari_featup.session.geometry import PlaneGeometry
from napari_featup.session.request import RunSettings, parse_channels, plan_run
from napari_featup.session.stack import FeatureStack

layers = pytest.importorskip("napari.layers")


def stack_layer(**kwargs):
    data = np.random.default_rng(0).integers(0, 1000, (3, 42, 56), dtype=np.uint16)
    return layers.Image(data, name="stack", scale=(4.0, 1.0, 1.0), **kwargs)


def test_default_settings_are_the_widget_defaults():
    assert RunSettings().extract_kwargs() == dict(
        backbone="dinov2",
        upsampler="bilinear",
        weights="pretrained",
        device="auto",
        precision="float32",
        scaling="contrast_limits",
    )


def test_weights_file_must_be_given():
    s = RunSettings(weights="file")
    with pytest.raises(SettingsError, match="no file is given"):
        s.extract_kwargs()
    s.weights_path = " /data/w.safetensors "
    assert s.extract_kwargs()["weights"] == "/data/w.safetensors"
    with pytest.raises(SettingsError, match="weights must be one of"):
        RunSettings(weights="cached").extract_kwargs()


def test_upsampler_options_and_weights():
    s = RunSettings(upsampler="featup-implicit", upsampler_options="steps=3, seed=5, x=a")
    s.upsampler_weights = " jbu.ckpt "
    kw = s.extract_kwargs()
    assert kw["upsampler_options"] == {"steps": 3, "seed": 5, "x": "a"}
    assert "upsampler_weights" not in kw  # featup-implicit has none (the row is hidden)
    s.upsampler = "featup-jbu"
    assert s.extract_kwargs()["upsampler_weights"] == "jbu.ckpt"
    s.upsampler = "featup-implicit"
    s.upsampler_options = "steps"
    with pytest.raises(SettingsError, match="KEY=VALUE") as info:
        s.extract_kwargs()
    assert "settings=fast" in str(info.value)  # the example shows this upsampler's defaults
    assert "upsampler_options" not in RunSettings(upsampler_options=" ").extract_kwargs()


@pytest.mark.parametrize("upsampler", ["bilinear", "jbu-classic", "guided-fit"])
def test_upsampler_weights_left_from_another_upsampler_are_not_passed(upsampler):
    # found by tests/_qt/test_concurrency.py: random upsampler weights chosen for
    # featup-jbu, then jbu-classic chosen (the weights row hidden): its run failed with
    # "the jbu-classic upsampler has no weights"
    for source, path in (("random", ""), ("file", "jbu.ckpt"), ("published", "jbu.ckpt")):
        s = RunSettings(upsampler="featup-jbu", upsampler_weights_source=source)
        s.upsampler_weights = path
        assert s.extract_kwargs()["upsampler_weights"] == (path or "random")
        s.upsampler = upsampler
        assert "upsampler_weights" not in s.extract_kwargs()


def test_channels_parse_or_raise_settings_error():
    assert parse_channels("") is None and parse_channels(" , ") is None
    assert parse_channels("3, 1,0") == [3, 1, 0]
    assert parse_channels("1") == [1]
    for bad in ("a,b,c", "0,1", "1.5", "0,1,2,3"):
        with pytest.raises(SettingsError, match="not understood") as info:
            parse_channels(bad)
        # one type for "the user can fix this", still a ValueError for older callers
        assert isinstance(info.value, FeatUpError) and isinstance(info.value, ValueError)
    assert RunSettings(channels="2,1,0").extract_kwargs()["channels"] == [2, 1, 0]


def test_plan_displayed_slice_and_all_slices():
    layer = stack_layer()
    plan = plan_run(RunSettings(weights="random"), layer, world_point=(8.0, 0.0, 0.0))
    assert list(plan.request.planes) == [(2,)]  # world z 8 / scale 4 = slice 2
    assert plan.geometry.leading == (3,) and plan.geometry.size == (42, 56)
    assert plan.request.extract["contrast_limits"] == [float(v) for v in layer.contrast_limits]
    assert plan.config["image"] == "stack" and plan.config["channel_axis"] is None
    assert plan.request.data is layer.data and plan.extends is None

    plan = plan_run(RunSettings(slices="all"), layer, world_point=(0.0, 0.0, 0.0))
    assert list(plan.request.planes) == [(0,), (1,), (2,)]
    plan = plan_run(RunSettings(scaling="minmax"), layer, planes=[(1,)])
    assert list(plan.request.planes) == [(1,)] and "contrast_limits" not in plan.request.extract


def test_plan_channel_axis():
    layer = stack_layer()
    plan = plan_run(RunSettings(channel_axis=0, channels="2,1,0"), layer)
    assert plan.geometry.leading == () and list(plan.request.planes) == [()]
    assert plan.request.channel_axis == 0 and plan.geometry.scale == [1.0, 1.0]
    with pytest.raises(SettingsError, match="not a stack axis"):
        plan_run(RunSettings(channel_axis=1), layer)


def test_plan_adds_only_missing_planes_to_a_stack():
    layer = stack_layer()
    settings = RunSettings(weights="random")
    config = plan_run(settings, layer, planes=[(0,)]).config
    geo = PlaneGeometry((3,), (42, 56), [4.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    stack = FeatureStack("stack", geo, config, results={(0,): None, (1,): None})
    stack.pca = object()
    plan = plan_run(settings, layer, planes=[(0,), (2,)], stack=stack, add_to_stack=True)
    assert list(plan.request.planes) == [(2,)]
    assert plan.extends is stack and plan.request.pca is stack.pca
    assert plan_run(settings, layer, planes=[(1,)], stack=stack, add_to_stack=True) is None
    # other settings: a new stack, with a PCA of its own
    plan = plan_run(RunSettings(weights="pretrained"), layer, planes=[(1,)], stack=stack)
    assert plan.extends is None and plan.request.pca is None


def test_plan_refuses_what_cannot_run():
    with pytest.raises(SettingsError, match="There is no image layer"):
        plan_run(RunSettings(), None)
    with pytest.raises(SettingsError, match="'seg' is a Labels layer"):
        plan_run(RunSettings(), None, labels_name="seg")
    tiny = layers.Image(np.zeros((10, 30), np.uint8), name="tiny")
    with pytest.raises(SettingsError, match="smaller than one 14 px patch"):
        plan_run(RunSettings(), tiny)
    with pytest.raises(SettingsError, match="Channels 'x' are not understood"):
        plan_run(RunSettings(channels="x"), stack_layer())
