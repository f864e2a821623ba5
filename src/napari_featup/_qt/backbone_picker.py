"""The backbone picker: a combo grouped as FeatUp's six, modern backbones and a custom
name (``timm:<model>`` or ``hf-hub:<repo>``), typed in a field below it.

Group headers are items that cannot be chosen. Each entry's tooltip says what it is,
its licence, whether it has a text tower and whether a learned upsampler exists for it
(FeatUp's published JBU for FeatUp's six; a JBU you train for any backbone).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QStandardItem, QStandardItemModel
from qtpy.QtWidgets import QComboBox, QLabel, QLineEdit, QSizePolicy

from ..backbones import describe_backbones, featup_checkpoint_settings, get_spec
from ..errors import FeatUpError

#: the combo's data for the "custom name" entry
CUSTOM = "__custom__"
HEADERS = {
    "featup": "— FeatUp's six (published JBU) —",
    "modern": "— Modern (no published JBU) —",
    "custom": "— Custom name —",
}
CUSTOM_TEXT = "timm / hf-hub name…"
TRAIN_YOUR_OWN = (
    "learned upsamplers: AnyUp (anyup, anyup-multi: any backbone); no published JBU: "
    "train your own JBU (Train JBU widget) and give it as Upsampler weights: file…; "
    "training-free upsamplers work as they are"
)


def learned_upsampler_text(name: str) -> str:
    """One line: which learned upsamplers have published weights for backbone ``name``
    (AnyUp takes any; JAFAR and FeatUp's JBU only those they were trained on)."""
    from ..upsamplers import upsampler_info

    try:
        jafar = upsampler_info("jafar").cls.published_weights(name) is not None
    except FeatUpError:
        jafar = False
    settings = featup_checkpoint_settings(name)
    if not settings:
        return TRAIN_YOUR_OWN.replace(
            "any backbone)", "any backbone" + (", and JAFAR's checkpoint)" if jafar else ")")
        )
    kinds = " and ".join("use_norm" if s else "no_norm" for s in settings)
    also = ", JAFAR's checkpoint" if jafar else ""
    return (
        f"learned upsamplers: FeatUp's published JBU stack ({kinds}){also}, AnyUp (any "
        "backbone), or train your own JBU"
    )


def backbone_tooltip(info: dict[str, Any]) -> str:
    """The tooltip of one entry, from :func:`~napari_featup.backbones.describe_backbones`."""
    lines = [
        f"{info['name']}: {info['description']}",
        f"{info['dim']}-d, stride {info['stride']} px; timm {info['timm_name']}",
        f"licence of the weights: {info['licence'] or 'see the model card'}",
        _text_line(info),
        learned_upsampler_text(info["name"]),
    ]
    return "\n".join(lines)


def _text_line(info: dict[str, Any]) -> str:
    from ..text import TEXT_PARTNERS, has_text_tower

    if has_text_tower(info["name"]):
        return "text queries: yes (Similarity > Text)"
    if info["name"] in TEXT_PARTNERS:
        return (
            f"text queries: with {TEXT_PARTNERS[info['name']]} (the same model; these patch "
            "tokens are not in its text tower's space)"
        )
    if info.get("text_tower"):
        return "text queries: not yet (its text tower is not wired in napari-featup)"
    return "text queries: no"


def normalise_custom(text: str) -> str:
    """A typed custom name as a backbone name: ``hf-hub:…`` gets the ``timm:`` prefix."""
    text = text.strip()
    if text.lower().startswith("hf-hub:"):
        return "timm:" + text
    return text


def check_custom(name: str) -> str:
    """'' when ``name`` (normalised) can be built, else the reason, for the field's label.

    ``timm:`` names are resolved (built on the meta device: no memory, no download);
    ``timm:hf-hub:`` names read their config from the Hugging Face Hub or cache, so they
    are checked when Run builds them, not while typing.
    """
    from ..backbones import is_backbone_name

    if not name:
        return "type a timm model name (timm:<model>) or a Hugging Face name (hf-hub:<repo>)"
    if not is_backbone_name(name):
        return f"{name!r} is not a backbone name: write timm:<model> or hf-hub:<repo>"
    if name.lower().startswith("timm:hf-hub:"):
        return ""
    try:
        get_spec(name)
    except FeatUpError as exc:
        return str(exc)
    return ""


class BackbonePicker(QObject):
    """``combo`` (grouped), ``custom_edit`` (shown for the custom entry) and ``message``
    (what is wrong with the custom name, or what it resolved to). ``changed`` fires
    when the chosen backbone changes (a custom name: when editing finishes)."""

    changed = Signal()

    def __init__(self, combo: QComboBox, parent: QObject | None = None):
        super().__init__(parent)
        self.combo = combo
        model = QStandardItemModel(combo)
        infos = describe_backbones()
        for group in ("featup", "modern"):
            model.appendRow(_header(HEADERS[group]))
            for name, info in infos.items():
                if info["group"] == group:
                    item = QStandardItem(name)
                    item.setData(name, Qt.UserRole)
                    item.setToolTip(backbone_tooltip(info))
                    model.appendRow(item)
        model.appendRow(_header(HEADERS["custom"]))
        custom = QStandardItem(CUSTOM_TEXT)
        custom.setData(CUSTOM, Qt.UserRole)
        custom.setToolTip(
            "Any timm model with a dense feature map: timm:<model name> (e.g. "
            "timm:vit_small_patch16_224.augreg_in21k) or a Hugging Face name "
            "(hf-hub:timm/<repo>).\n" + TRAIN_YOUR_OWN
        )
        model.appendRow(custom)
        combo.setModel(model)
        self.custom_edit = QLineEdit()
        self.custom_edit.setPlaceholderText("timm:<model> or hf-hub:<repo>")
        self.custom_edit.setToolTip(custom.toolTip())
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.message.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
        self.message.setVisible(False)
        self.custom_edit.setVisible(False)
        combo.currentIndexChanged.connect(self._chosen)
        self.custom_edit.editingFinished.connect(self._custom_finished)

    def name(self) -> str:
        """The chosen backbone: a registered name, or the custom name as typed
        (normalised; '' when none is typed)."""
        data = self.combo.currentData()
        if data == CUSTOM:
            return normalise_custom(self.custom_edit.text())
        return str(data or "")

    def is_custom(self) -> bool:
        return self.combo.currentData() == CUSTOM

    def set_name(self, name: str) -> None:
        """Choose ``name``: its entry when registered, else the custom entry with it."""
        i = self.combo.findData(str(name).lower())
        if i >= 0:
            self.combo.setCurrentIndex(i)
            return
        self.custom_edit.setText(str(name))
        self.combo.setCurrentIndex(self.combo.findData(CUSTOM))
        self._custom_finished()

    def check(self) -> str:
        """Check the custom name (no-op for a listed backbone); show and return the
        problem ('' when there is none)."""
        if not self.is_custom():
            self._show("", "")
            return ""
        name = self.name()
        problem = check_custom(name)
        if problem:
            self._show(f"⚠ {problem}", "color: #ff6666")
        elif name.lower().startswith("timm:hf-hub:"):
            self._show(
                "checked when you Run: its config is read from the Hugging Face Hub or "
                "cache; learned upsamplers: AnyUp (any backbone), or train your own JBU",
                "",
            )
        else:
            spec = get_spec(name)
            self._show(
                f"{spec.dim}-d, stride {spec.stride} px; learned upsamplers: AnyUp (any "
                "backbone), or train your own JBU",
                "",
            )
        return problem

    def _show(self, text: str, style: str) -> None:
        self.message.setText(text)
        self.message.setStyleSheet(style)
        self.message.setVisible(bool(text))

    def _chosen(self, *_: Any) -> None:
        custom = self.is_custom()
        self.custom_edit.setVisible(custom)
        self.check()
        self.combo.setToolTip(
            self.combo.itemData(self.combo.currentIndex(), Qt.ToolTipRole) or "The backbone"
        )
        if custom and not self.custom_edit.text().strip():
            self.custom_edit.setFocus()
        if not custom or self.custom_edit.text().strip():
            self.changed.emit()

    def _custom_finished(self) -> None:
        self.custom_edit.setCursorPosition(0)  # show the name's start (timm:…)
        if self.is_custom():
            self.check()
            self.changed.emit()


def _header(text: str) -> QStandardItem:
    """A group title in the list: shown, never chosen."""
    item = QStandardItem(text)
    item.setFlags(Qt.NoItemFlags)
    item.setData(None, Qt.UserRole)
    font = item.font()
    font.setBold(True)
    item.setFont(font)
    return item
