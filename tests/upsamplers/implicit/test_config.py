"""Implicit settings: the presets against FeatUp's, and the registry's options class
kept in step with ImplicitConfig."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import napari_featup as nf
from napari_featup.upsamplers import make_options, upsampler_options
from napari_featup.upsamplers.implicit import ImplicitConfig, ImplicitOptions, resolve_config


def test_presets():
    featup = resolve_config("featup")
    # FeatUp's configs/implicit_upsampler.yaml and train_implicit_upsampler.py
    assert (featup.views, featup.steps, featup.batch, featup.lr) == (3000, 1200, 10, 2e-3)
    assert (featup.n_freqs, featup.proj_dim, featup.pca_views, featup.max_pad) == (30, 128, 50, 30)
    assert (featup.dropout, featup.cells, featup.schedule) == (0.2, 0, "constant")
    fast, preview = resolve_config("fast"), resolve_config("Preview")
    assert preview.views * preview.steps < fast.views * fast.steps < featup.views * featup.steps
    assert resolve_config("fast", steps=None).steps == fast.steps  # None: keep the preset's
    assert resolve_config(fast, steps=9).steps == 9


def test_options_follow_the_config():
    """ImplicitOptions is written out (documented fields), so it must keep naming every
    ImplicitConfig field, in order, with the same type or None (the preset's value)."""
    cfg = typing.get_type_hints(ImplicitConfig)
    opts = typing.get_type_hints(ImplicitOptions)
    assert list(opts) == ["settings", "seed", *cfg]
    for name, kind in cfg.items():
        assert opts[name] == kind | None, name
    assert all(f.default is None for f in dataclasses.fields(ImplicitOptions)[2:])
    assert upsampler_options("featup-implicit") == {"settings": "fast", "seed": 0}
    made = make_options("featup-implicit", {"steps": "40", "settings": "featup"})
    assert made.config() == resolve_config("featup", steps=40)
    # range checks run when the options are made, before a backbone is loaded
    with pytest.raises(nf.UpsamplerError, match="steps=0"):
        make_options("featup-implicit", {"steps": 0})
    with pytest.raises(nf.UpsamplerError, match="unknown implicit settings"):
        make_options("featup-implicit", {"settings": "slow"})
