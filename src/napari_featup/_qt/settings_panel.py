"""The settings forms: image, backbone, weights, upsampler and its weights, slices
(the Run section), and options, device, precision and normalisation (Advanced).

They show a :class:`~napari_featup.session.request.RunSettings` and read one back
(:meth:`SettingsPanel.run_settings`); checking and parsing happen there, not here.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from ..backbones import get_spec
from ..session.geometry import layer_shape
from ..session.request import DOWNSAMPLES, RunSettings, options_hint
from ..upsamplers import describe_upsamplers, upsampler_info, upsampler_options
from .backbone_picker import BackbonePicker
from .train_widget import attach_recent_menu

WEIGHTS = {
    "pretrained": "pretrained (download / cache)",
    "file": "local file…",
    "random": "random (untrained: demo and tests only)",
}
UPSAMPLER_WEIGHTS = {
    "published": "published (download / cache)",
    "file": "file…",
    "random": "random (untrained: demo and tests only)",
}
#: characters a combo box shows before eliding (keeps the dock narrow; the list
#: itself shows the whole text)
COMBO_CHARS = 12
NORMALISATIONS = {
    "contrast_limits": "layer contrast limits",
    "percentile": "percentiles 0.5–99.5",
    "minmax": "min–max",
}
SLICES = {"displayed": "displayed slice", "all": "all slices"}


def _devices() -> list[str]:
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def _combo(items: dict[str, str] | list[str], tips: dict[str, str] | None = None) -> QComboBox:
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(COMBO_CHARS)
    for key in items:
        if isinstance(items, dict):
            combo.addItem(items[key], key)
        else:
            combo.addItem(key, key)
        if tips and key in tips:
            combo.setItemData(combo.count() - 1, tips[key], Qt.ToolTipRole)
    return combo


def _form(parent: QWidget | None = None) -> tuple[QWidget, QFormLayout]:
    w = QWidget(parent)
    form = QFormLayout(w)
    form.setContentsMargins(0, 0, 0, 0)
    form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    return w, form


def _file_row(edit: QLineEdit, button: QPushButton) -> QWidget:
    row = QWidget()
    box = QHBoxLayout(row)
    box.setContentsMargins(0, 0, 0, 0)
    box.addWidget(edit)
    box.addWidget(button)
    button.setMaximumWidth(30)
    return row


def _warning(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: #ffaa33; font-weight: bold")
    # wrapped text needs its full height for the dock's width (never squeezed)
    label.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
    return label


def scale_text(backbone: str, downsample: Any, layer: Any) -> str:
    """What the working scale means for ``layer``: image px per feature cell, and in
    physical units when the layer has a scale (napari's ``units`` where set to one,
    else µm, as microscopy readers give the scale)."""
    from ..tiling import resolve_scale

    try:
        scale = resolve_scale(get_spec(backbone).stride, float(downsample))
    except Exception:  # noqa: BLE001 - an unknown backbone or scale: nothing to say
        return ""
    if layer is None or float(layer.scale[-1]) == 1.0:
        return "= " + scale.describe()
    unit = str((getattr(layer, "units", None) or ("µm",))[-1])
    if unit in ("pixel", "px", ""):
        unit = "µm"
    unit = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}.get(unit, unit)
    return "= " + scale.describe(float(layer.scale[-1]), unit)


class SettingsPanel(QObject):
    """The run settings, as two forms for the dock to place: :attr:`run_form` (image,
    backbone, weights, upsampler and its weights and options, channels, slices) and
    :attr:`advanced_form` (device, precision, normalisation). ``changed`` fires when a
    choice that changes which rows are shown, or the estimate, changes."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.run_form, form = _form()
        self.advanced_form, adv = _form()
        defaults = RunSettings()

        self.image_combo = _combo([])
        self.image_combo.setToolTip("Image layer to compute features of")
        form.addRow("Image", self.image_combo)

        # grouped: FeatUp's six, modern, a custom timm / hf-hub name typed below
        self.backbone_combo = _combo([])
        self.backbone_picker = BackbonePicker(self.backbone_combo, self)
        self.backbone_custom = self.backbone_picker.custom_edit
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("", self.backbone_custom)
        form.addRow(self.backbone_picker.message)
        self.backbone_picker.set_name(defaults.backbone)

        self.weights_combo = _combo(WEIGHTS)
        self.weights_combo.setToolTip("The backbone's weights")
        self.weights_combo.setCurrentIndex(self.weights_combo.findData(defaults.weights))
        self.weights_path = QLineEdit()
        self.weights_path.setPlaceholderText("weights file (.safetensors, .pth, .bin)")
        self.weights_browse = QPushButton("…")
        self.weights_file_row = _file_row(self.weights_path, self.weights_browse)
        form.addRow("Weights", self.weights_combo)
        form.addRow("", self.weights_file_row)

        ups = describe_upsamplers()
        self.upsampler_combo = _combo(list(ups), ups)
        self.upsampler_combo.setCurrentText(defaults.upsampler)
        form.addRow("Upsampler", self.upsampler_combo)
        self.upsampler_weights_combo = _combo(UPSAMPLER_WEIGHTS)
        self.upsampler_weights_combo.setToolTip(
            "The upsampler's weights (for upsamplers that have them, e.g. featup-jbu): "
            "the published checkpoint for the backbone (downloaded once, cached), a "
            "local checkpoint file (.ckpt), or random (untrained, for trying the plugin)"
        )
        self.upsampler_weights = QLineEdit()
        self.upsampler_weights.setPlaceholderText("upsampler checkpoint (.ckpt)")
        self.upsampler_weights_browse = QPushButton("…")
        self.upsampler_weights_file_row = _file_row(
            self.upsampler_weights, self.upsampler_weights_browse
        )
        self.upsampler_weights_label = QLabel("Upsampler weights")
        self.upsampler_weights_label.setWordWrap(True)
        # trained checkpoints (Train JBU widget) are offered by the button beside it
        self.recent_button = attach_recent_menu(self.upsampler_weights, self.upsampler_combo)
        self.upsampler_weights_row = QWidget()
        box = QHBoxLayout(self.upsampler_weights_row)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.upsampler_weights_combo)
        box.addWidget(self.recent_button)
        form.addRow(self.upsampler_weights_label, self.upsampler_weights_row)
        form.addRow("", self.upsampler_weights_file_row)
        self.upsampler_options = QLineEdit()
        self.upsampler_options.setToolTip(
            "Options of the chosen upsampler: KEY=VALUE items separated by commas, e.g. "
            "settings=preview (a quick look) or settings=featup, steps=1200 for "
            "featup-implicit. Empty: its defaults (shown greyed). `napari-featup list` "
            "lists every upsampler's options."
        )
        # each upsampler keeps the options typed for it
        self._option_texts: dict[str, str] = {}
        self._options_for = self.upsampler_combo.currentText()
        form.addRow("Options", self.upsampler_options)
        self.random_warning = _warning(
            "⚠ Random weights: features are meaningless. For trying the plugin only."
        )
        form.addRow(self.random_warning)

        self.channel_axis_combo = _combo([])
        self.channel_axis_combo.setToolTip(
            "For a multichannel layer: the axis holding channels (otherwise a stack axis)"
        )
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("e.g. 0,1,2 or 1 (grey)")
        self.channels_edit.setToolTip(
            "Which channels feed the backbone's R, G and B inputs: three indices, or "
            "one index used as grey. Empty: RGB as is, grey repeated, other counts averaged."
        )
        self.channel_axis_label = QLabel("Channel axis")
        self.channels_label = QLabel("Channels → RGB")
        form.addRow(self.channel_axis_label, self.channel_axis_combo)
        form.addRow(self.channels_label, self.channels_edit)

        self.slices_combo = _combo(SLICES)
        self.follow_slider = QCheckBox("compute slices as the slider moves")
        self.follow_slider.setChecked(defaults.follow_slider)
        self.slices_label = QLabel("Slices")
        form.addRow(self.slices_label, self.slices_combo)
        form.addRow("", self.follow_slider)

        self.device_combo = _combo(_devices())
        adv.addRow("Device", self.device_combo)
        self.precision_combo = _combo(["float32", "bfloat16", "float16"])
        self.precision_combo.setToolTip("float16 needs a GPU")
        adv.addRow("Precision", self.precision_combo)
        self.norm_combo = _combo(NORMALISATIONS)
        self.norm_combo.setToolTip(
            "How intensities are mapped to [0, 1] before the backbone; multichannel "
            "images are scaled per channel with percentiles"
        )
        adv.addRow("Normalisation", self.norm_combo)
        self.scale_combo = _combo(
            {k: "native" if k == 1 else f"downsample {k}x" for k in DOWNSAMPLES}
        )
        self.scale_combo.setToolTip(
            "Working scale: the image is resampled k times smaller before the backbone, "
            "so one feature cell covers k x the patch size in image pixels (large "
            "images: fewer tiles, coarser features)"
        )
        self.scale_info = QLabel()
        self.scale_info.setWordWrap(True)
        adv.addRow("Working scale", self.scale_combo)
        adv.addRow("", self.scale_info)
        self.tiles_combo = _combo({"auto": "native tiles", "whole": "whole image"})
        self.tiles_combo.setToolTip(
            "The backbone runs on overlapping tiles of its native input size (518 px for "
            "DINOv2, 224 for FeatUp's ViTs), blended seamlessly; 'whole image' runs it "
            "once over everything (a ViT's memory grows with the square of the tokens)"
        )
        adv.addRow("Backbone tiles", self.tiles_combo)

        self.upsampler_combo.currentIndexChanged.connect(self._upsampler_changed)
        self._upsampler_changed()
        self.weights_browse.clicked.connect(self._browse_weights)
        self.upsampler_weights_browse.clicked.connect(self._browse_upsampler_weights)
        # typing a checkpoint path means "use this file"
        self.upsampler_weights.textChanged.connect(self._upsampler_path_typed)
        for combo in (
            self.image_combo,
            self.weights_combo,
            self.channel_axis_combo,
            self.upsampler_combo,
            self.upsampler_weights_combo,
            self.device_combo,
            self.slices_combo,
            self.scale_combo,
            self.tiles_combo,
        ):
            combo.currentIndexChanged.connect(self.changed)
        self.upsampler_options.editingFinished.connect(self.changed)
        self.backbone_picker.changed.connect(self.changed)

    # -------------------------------------------------------------- the model
    def run_settings(self) -> RunSettings:
        """The settings as shown (text fields as typed, not yet parsed)."""
        return RunSettings(
            backbone=self.backbone(),
            upsampler=self.upsampler_combo.currentText(),
            upsampler_weights=self.upsampler_weights.text(),
            upsampler_weights_source=self.upsampler_weights_combo.currentData(),
            upsampler_options=self.upsampler_options.text(),
            weights=self.weights_combo.currentData(),
            weights_path=self.weights_path.text(),
            device=self.device_combo.currentText(),
            precision=self.precision_combo.currentText(),
            scaling=self.norm_combo.currentData(),
            channel_axis=self.channel_axis(),
            channels=self.channels_edit.text(),
            slices=self.slices_combo.currentData(),
            follow_slider=self.follow_slider.isChecked(),
            downsample=float(self.scale_combo.currentData()),
            tiles=self.tiles_combo.currentData(),
        )

    def backbone(self) -> str:
        """The chosen backbone's name (a custom ``timm:`` name as typed, normalised)."""
        return self.backbone_picker.name()

    def channel_axis(self) -> int | None:
        """The axis chosen under Channel axis (None: no channel axis)."""
        i = self.channel_axis_combo.currentIndex()
        return None if i <= 0 else i - 1

    # --------------------------------------------------------------- images
    def set_image_layers(self, layers: list[Any], keep: Any = None) -> None:
        """Offer ``layers``; keep the one whose ``unique_id`` is ``keep`` chosen (it may
        have been renamed), else choose the last (topmost)."""
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for lyr in layers:
            self.image_combo.addItem(lyr.name, lyr.unique_id)
        uids = [lyr.unique_id for lyr in layers]
        if keep in uids:
            self.image_combo.setCurrentIndex(uids.index(keep))
        elif layers:
            self.image_combo.setCurrentIndex(len(layers) - 1)
        self.image_combo.blockSignals(False)

    def image_uid(self) -> Any:
        """``unique_id`` of the chosen image layer (None when there is none)."""
        return self.image_combo.currentData()

    # ------------------------------------------------------------- visibility
    def update_rows(self, layer: Any) -> None:
        """Show the rows that apply: the weights files, the random-weights warning, the
        upsampler's weights (for upsamplers that have them), and for ``layer`` its
        channel-axis, channels and slices rows."""
        weights = self.weights_combo.currentData()
        self.weights_file_row.setVisible(weights == "file")
        takes = upsampler_info(self.upsampler_combo.currentText()).takes_weights
        up_weights = self.upsampler_weights_combo.currentData()
        for w in (self.upsampler_weights_label, self.upsampler_weights_row):
            w.setVisible(takes)
        self.upsampler_weights_file_row.setVisible(takes and up_weights == "file")
        self.random_warning.setVisible(weights == "random" or (takes and up_weights == "random"))
        shape = layer_shape(layer) if layer is not None else ()
        ndim_lead = max(0, len(shape) - 2)
        # channel axis choices follow the layer's stack axes
        want = ["none"] + [f"axis {i} ({shape[i]})" for i in range(ndim_lead)]
        have = [self.channel_axis_combo.itemText(i) for i in range(self.channel_axis_combo.count())]
        if want != have:
            self.channel_axis_combo.blockSignals(True)
            self.channel_axis_combo.clear()
            self.channel_axis_combo.addItems(want)
            self.channel_axis_combo.blockSignals(False)
        multichannel = layer is not None and (layer.rgb or ndim_lead > 0)
        for w in (self.channel_axis_label, self.channel_axis_combo):
            w.setVisible(ndim_lead > 0)
        for w in (self.channels_label, self.channels_edit):
            w.setVisible(bool(multichannel))
        stack = ndim_lead - (1 if self.channel_axis() is not None else 0) > 0
        for w in (self.slices_label, self.slices_combo, self.follow_slider):
            w.setVisible(stack)
        self.scale_info.setText(scale_text(self.backbone(), self.scale_combo.currentData(), layer))

    def _upsampler_changed(self, *_: Any) -> None:
        # each upsampler keeps the options typed for it; its defaults show greyed
        self._option_texts[self._options_for] = self.upsampler_options.text()
        self._options_for = self.upsampler_combo.currentText()
        self.upsampler_options.setText(self._option_texts.get(self._options_for, ""))
        self.upsampler_options.setEnabled(bool(upsampler_options(self._options_for)))
        self.upsampler_options.setPlaceholderText(options_hint(self._options_for))

    def _upsampler_path_typed(self, text: str) -> None:
        if text.strip():
            self.upsampler_weights_combo.setCurrentIndex(
                self.upsampler_weights_combo.findData("file")
            )

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.run_form,
            "Backbone weights",
            "",
            "Weights (*.safetensors *.pth *.pt *.bin);;All (*)",
        )
        if path:
            self.weights_path.setText(path)

    def _browse_upsampler_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.run_form, "Upsampler checkpoint", "", "Checkpoints (*.ckpt *.pth *.pt);;All (*)"
        )
        if path:
            self.upsampler_weights.setText(path)
