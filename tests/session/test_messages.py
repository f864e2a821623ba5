"""Errors become advice by type (no Qt)."""

from __future__ import annotations

from napari_featup import errors
from napari_featup.session.messages import explain
from napari_featup.session.request import parse_channels


def test_settings_error_is_shown_as_written():
    try:
        parse_channels("0,x,2")
    except errors.SettingsError as exc:
        msg = explain(exc, "starting a run")
    assert msg.startswith("Channels '0,x,2' are not understood. What to do:")


def test_other_value_errors_are_not_channel_typos():
    msg = explain(ValueError("invalid literal for int()"), "computing features")
    assert msg == "FeatUp failed computing features: ValueError: invalid literal for int()"
    assert "Channels" not in msg


def test_error_types_map_to_advice():
    cases = [
        (errors.WeightsUnavailableError("no file at ~/w"), "Weights are missing"),
        (errors.WeightsFileError("bad header"), "pick another file"),
        (errors.BackboneError("image needs at least 14 x 14 px"), "another backbone"),
        (errors.UpsamplerError("unknown option 'bogus'"), "Options field"),
        (errors.ImageError("NaN values"), "This image cannot be used"),
        (errors.FeatureFileError("not a feature file"), "feature file cannot be used"),
        (MemoryError("Unable to allocate 6.4 GiB"), "ran out of memory"),
        (RuntimeError("CUDA out of memory."), "ran out of memory"),
    ]
    for exc, expected in cases:
        msg = explain(exc, "here")
        assert expected in msg and str(exc) in msg, (exc, msg)
