from napari_featup._demo import setup_demo


def test_demo_opens_sample_and_widget(make_napari_viewer, monkeypatch):
    import napari_featup.backbones as backbones

    monkeypatch.setattr(backbones, "pretrained_cached", lambda name: False)  # offline machine
    viewer = make_napari_viewer()
    widget = setup_demo(viewer, "astronaut")
    assert [layer.name for layer in viewer.layers] == ["astronaut"]
    assert widget.weights_combo.currentData() == "random"
    assert widget.random_warning.isVisibleTo(widget)
    assert "FeatUp" in " ".join(viewer.window._dock_widgets.keys())


def test_pretrained_cached_is_false_for_empty_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from napari_featup.backbones import pretrained_cached

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    assert pretrained_cached("dinov2") is False
