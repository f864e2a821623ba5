"""The grouped backbone picker: group headers, tooltips naming learned upsamplers, the
custom timm / hf-hub name and its errors (Xvfb, random weights)."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtCore import Qt  # noqa: E402

import napari_featup as nf  # noqa: E402
from napari_featup._qt.backbone_picker import CUSTOM, HEADERS  # noqa: E402

from .test_dock import run_and_wait, two_region_rgb  # noqa: E402


def _rows(combo):
    model = combo.model()
    return [model.item(i) for i in range(model.rowCount())]


def _type_custom(qtbot, widget, text: str) -> None:
    widget.backbone_combo.setCurrentIndex(widget.backbone_combo.findData(CUSTOM))
    edit = widget.settings_panel.backbone_custom
    assert edit.isVisibleTo(widget)
    edit.setText(text)
    edit.editingFinished.emit()


def test_groups_headers_and_tooltips(viewer_widget):
    _, widget = viewer_widget
    rows = _rows(widget.backbone_combo)
    texts = [r.text() for r in rows]
    headers = [texts.index(HEADERS[g]) for g in ("featup", "modern", "custom")]
    assert headers == sorted(headers) and headers[0] == 0
    for i in headers:  # shown, never chosen
        assert not rows[i].flags() & (Qt.ItemIsEnabled | Qt.ItemIsSelectable)
    featup = texts[headers[0] + 1 : headers[1]]
    modern = texts[headers[1] + 1 : headers[2]]
    assert featup == nf.list_backbones("featup")
    assert modern == nf.list_backbones("modern")
    assert rows[headers[2] + 1].data(Qt.UserRole) == CUSTOM
    tips = {r.text(): r.toolTip() for r in rows}
    assert "FeatUp's published JBU stack (use_norm and no_norm)" in tips["dinov2"]
    assert "(no_norm)" in tips["maskclip"] and "text queries: yes" in tips["maskclip"]
    assert "text queries: with siglip2-b-dense" in tips["siglip2-b"]
    assert "text queries: yes" in tips["siglip2-b-dense"] and "text queries: no" in tips["dinov2"]
    for name in modern:
        assert "no published JBU: train your own JBU" in tips[name], name
        assert "AnyUp (anyup, anyup-multi: any backbone" in tips[name], name
    assert "JAFAR's checkpoint" in tips["dinov2"] and "JAFAR" in tips["dinov2-reg"]
    assert "JAFAR" not in tips["dino16"] and "JAFAR" not in tips["dinov3-s"]
    assert "DINOv3 License" in tips["dinov3-s"]
    # the combo's own tooltip follows the choice
    widget.backbone_combo.setCurrentText("dinov3-s")
    assert "train your own JBU" in widget.backbone_combo.toolTip()
    assert widget.settings_panel.run_settings().backbone == "dinov3-s"
    assert not widget.settings_panel.backbone_custom.isVisibleTo(widget)


def test_custom_timm_name_runs(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    with qtbot.waitSignal(widget.settings_panel.changed, timeout=5000):
        _type_custom(qtbot, widget, "  timm:vit_tiny_patch16_224 ")
    message = widget.settings_panel.backbone_picker.message
    assert message.isVisibleTo(widget) and "192-d, stride 16" in message.text()
    assert widget.settings_panel.run_settings().backbone == "timm:vit_tiny_patch16_224"
    assert run_and_wait(qtbot, widget) == "done", widget.last_error
    meta = widget.stacks[viewer.layers["photo"].unique_id].metadata
    assert meta["backbone"] == "timm:vit_tiny_patch16_224"
    # back to a listed backbone: the field and its message go
    widget.backbone_combo.setCurrentText("dinov2")
    assert not widget.settings_panel.backbone_custom.isVisibleTo(widget)
    assert not message.isVisibleTo(widget)


def test_hf_hub_name_is_prefixed(viewer_widget, qtbot):
    _, widget = viewer_widget
    _type_custom(qtbot, widget, "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    name = widget.settings_panel.run_settings().backbone
    assert name == "timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"
    assert "read from the Hugging Face Hub or cache" in (
        widget.settings_panel.backbone_picker.message.text()
    )


@pytest.mark.parametrize(
    ("typed", "said"),
    [
        ("timm:no_such_model_xyz", "timm cannot build model 'no_such_model_xyz'"),
        ("no_such_model_xyz", "is not a backbone name"),
        ("", "none is typed"),
    ],
)
def test_bad_custom_name_says_what_is_wrong(qtbot, viewer_widget, typed, said):
    viewer, widget = viewer_widget
    viewer.add_image(two_region_rgb(), name="photo")
    _type_custom(qtbot, widget, typed)
    message = widget.settings_panel.backbone_picker.message
    if typed:
        assert message.isVisibleTo(widget) and "⚠" in message.text()
        assert said.split("'")[0] in message.text(), message.text()
    assert not widget.run()  # nothing starts; the message says what to change
    assert said in widget.last_error and "What to do" in widget.last_error, widget.last_error
