"""The "FeatUp" dock widget: settings, Run/Cancel, similarity query and export.

Thin by design: it collects settings, hands a :class:`~napari_featup.jobs.RunRequest`
to the :class:`JobController` (a napari thread worker) and turns the returned
features into layers on the GUI thread through a
:class:`~napari_featup.layers.FeatureStack`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..backbones import get_spec, list_backbones
from ..jobs import RunOutput, RunRequest
from ..layers import FeatureStack, Index, PlaneGeometry, pca_name
from ..upsamplers import UpsamplerError, describe_upsamplers, parse_options, upsampler_options
from . import _query
from ._errors import explain
from ._export import export_stack_plane
from ._layers import current_plane, image_geometry, upsert_layer
from ._runner import JobController

WEIGHTS = {
    "pretrained": "pretrained (download / cache)",
    "file": "local file…",
    "random": "random (untrained: demo and tests only)",
}
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


class FeatUpWidget(QWidget):
    """Compute backbone features of an image layer; show PCA and similarity layers.

    Signals for scripts and tests: ``run_finished(status)`` after a run's layers are
    in the viewer (status ``done``, ``error`` or ``cancelled``), ``similarity_updated``
    after the similarity layer changed.
    """

    run_finished = Signal(str)
    similarity_updated = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.jobs = JobController(self)
        #: FeatureStack per image layer (keyed by layer.unique_id), the latest run's.
        #: (Plugins get proxies of layers, so id() is not stable; unique_id is.)
        self.stacks: dict[Any, FeatureStack] = {}
        self.query_layer: Any = None
        self.last_error: str | None = None
        self._build_ui()
        self._connect_viewer()
        self._refresh_images()
        self._update_controls()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        form = QFormLayout()
        outer.addLayout(form)

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer to compute features of")
        form.addRow("Image", self.image_combo)

        self.backbone_combo = QComboBox()
        for name in list_backbones():
            self.backbone_combo.addItem(name)
            self.backbone_combo.setItemData(
                self.backbone_combo.count() - 1, get_spec(name).description, 3
            )
        self.backbone_combo.setCurrentText("dinov2")
        form.addRow("Backbone", self.backbone_combo)

        self.upsampler_combo = QComboBox()
        for name, desc in describe_upsamplers().items():
            self.upsampler_combo.addItem(name)
            self.upsampler_combo.setItemData(self.upsampler_combo.count() - 1, desc, 3)
        form.addRow("Upsampler", self.upsampler_combo)
        self.upsampler_weights = QLineEdit()
        self.upsampler_weights.setPlaceholderText("optional: upsampler checkpoint file")
        self.upsampler_weights.setToolTip(
            "A local checkpoint for upsamplers with weights (e.g. a FeatUp JBU .ckpt); "
            "empty: the upsampler's default (its published checkpoint, cached)"
        )
        form.addRow("", self.upsampler_weights)
        self.upsampler_options = QLineEdit()
        self.upsampler_options.setToolTip(
            "Options of the chosen upsampler: KEY=VALUE items separated by commas, e.g. "
            "settings=featup, steps=1200 for featup-implicit. Empty: its defaults (shown "
            "greyed). `napari-featup list` lists every upsampler's options."
        )
        self._option_texts: dict[str, str] = {}
        self._options_for = self.upsampler_combo.currentText()
        form.addRow("Options", self.upsampler_options)

        self.weights_combo = QComboBox()
        for key, text in WEIGHTS.items():
            self.weights_combo.addItem(text, key)
        self.weights_path = QLineEdit()
        self.weights_path.setPlaceholderText("weights file (.safetensors, .pth, .bin)")
        self.weights_browse = QPushButton("…")
        self.weights_browse.setMaximumWidth(30)
        row = QHBoxLayout()
        row.addWidget(self.weights_path)
        row.addWidget(self.weights_browse)
        self.weights_file_row = QWidget()
        self.weights_file_row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        form.addRow("Weights", self.weights_combo)
        form.addRow("", self.weights_file_row)
        self.random_warning = QLabel(
            "⚠ Random weights: features are meaningless. For trying the plugin only."
        )
        self.random_warning.setWordWrap(True)
        self.random_warning.setStyleSheet("color: #ffaa33; font-weight: bold")
        form.addRow(self.random_warning)

        self.device_combo = QComboBox()
        self.device_combo.addItems(_devices())
        form.addRow("Device", self.device_combo)
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(["float32", "bfloat16", "float16"])
        self.precision_combo.setToolTip("float16 needs a GPU")
        form.addRow("Precision", self.precision_combo)

        self.norm_combo = QComboBox()
        for key, text in NORMALISATIONS.items():
            self.norm_combo.addItem(text, key)
        self.norm_combo.setToolTip("How intensities are mapped to [0, 1] before the backbone")
        form.addRow("Normalisation", self.norm_combo)

        self.channel_axis_combo = QComboBox()
        self.channel_axis_combo.setToolTip(
            "For a multichannel layer: the axis holding channels (otherwise a stack axis)"
        )
        self.channels_edit = QLineEdit()
        self.channels_edit.setPlaceholderText("e.g. 0,1,2 (R,G,B) or 1 (grey)")
        self.channels_edit.setToolTip(
            "Which channels feed the backbone's R, G and B inputs: three indices, or "
            "one index used as grey. Empty: RGB as is, grey repeated, other counts averaged."
        )
        self.channel_axis_label = QLabel("Channel axis")
        self.channels_label = QLabel("Channels → RGB")
        form.addRow(self.channel_axis_label, self.channel_axis_combo)
        form.addRow(self.channels_label, self.channels_edit)

        self.slices_combo = QComboBox()
        for key, text in SLICES.items():
            self.slices_combo.addItem(text, key)
        self.follow_slider = QCheckBox("compute slices as the slider moves")
        self.follow_slider.setChecked(True)
        self.slices_label = QLabel("Slices")
        form.addRow(self.slices_label, self.slices_combo)
        form.addRow("", self.follow_slider)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        outer.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)

        box = QGroupBox("Similarity")
        qform = QVBoxLayout(box)
        hint = QLabel(
            "Ctrl-click the image for a positive point, Ctrl+Shift-click for a negative "
            "one, or add points to the “FeatUp query” layer. Points average; negatives "
            "subtract."
        )
        hint.setWordWrap(True)
        qform.addWidget(hint)
        signs = QHBoxLayout()
        self.sign_group = QButtonGroup(self)
        self.positive_radio = QRadioButton("positive")
        self.negative_radio = QRadioButton("negative")
        self.positive_radio.setChecked(True)
        for b in (self.positive_radio, self.negative_radio):
            self.sign_group.addButton(b)
            signs.addWidget(b)
        signs.insertWidget(0, QLabel("New points:"))
        qform.addLayout(signs)
        qbuttons = QHBoxLayout()
        self.query_button = QPushButton("Add points")
        self.query_button.setToolTip("Select the query layer in add mode")
        self.flip_button = QPushButton("Flip selected")
        self.clear_button = QPushButton("Clear")
        for b in (self.query_button, self.flip_button, self.clear_button):
            qbuttons.addWidget(b)
        qform.addLayout(qbuttons)
        trow = QHBoxLayout()
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-1.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.mask_button = QPushButton("Threshold → Labels")
        trow.addWidget(QLabel("Threshold"))
        trow.addWidget(self.threshold_spin)
        trow.addWidget(self.mask_button)
        qform.addLayout(trow)
        outer.addWidget(box)

        self.export_button = QPushButton("Export features…")
        self.export_highres = QCheckBox("include full-resolution features (large)")
        outer.addWidget(self.export_button)
        outer.addWidget(self.export_highres)
        outer.addStretch(1)

        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.weights_combo.currentIndexChanged.connect(self._update_controls)
        self.upsampler_combo.currentIndexChanged.connect(self._upsampler_changed)
        self._upsampler_changed()
        self.weights_browse.clicked.connect(self._browse_weights)
        self.image_combo.currentIndexChanged.connect(self._remember_image)
        self.image_combo.currentIndexChanged.connect(self._update_controls)
        self.channel_axis_combo.currentIndexChanged.connect(self._update_controls)
        self.query_button.clicked.connect(self.activate_query_layer)
        self.flip_button.clicked.connect(self._flip_selected)
        self.clear_button.clicked.connect(self.clear_points)
        self.mask_button.clicked.connect(lambda: self.make_mask())
        self.export_button.clicked.connect(self._export_dialog)
        self.sign_group.buttonClicked.connect(self._sign_changed)
        self.jobs.started.connect(self._update_controls)
        self.jobs.progressed.connect(
            lambda step, total, msg: self.status.setText(f"{step}/{total}: {msg}")
        )

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.reordered.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._on_slider)
        self._click_cb = _query.ctrl_click_callback(self._query_layer_for_click)
        self.viewer.mouse_drag_callbacks.append(self._click_cb)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.cancel()
        if self._click_cb in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._click_cb)
        super().closeEvent(event)

    # ------------------------------------------------------------ controls
    def _alive(self, layer: Any) -> bool:
        """Whether ``layer`` (or a proxy of it) is still in the viewer."""
        return any(lyr.unique_id == layer.unique_id for lyr in self.viewer.layers)

    def _image_layers(self) -> list[Image]:
        return [
            lyr
            for lyr in self.viewer.layers
            if isinstance(lyr, Image) and "napari_featup" not in lyr.metadata
        ]

    def _on_layers_changed(self, event: Any = None) -> None:
        for lyr in self.viewer.layers:
            try:
                lyr.events.name.disconnect(self._refresh_images)
            except (TypeError, ValueError, RuntimeError):
                pass
            lyr.events.name.connect(self._refresh_images)
        live = {lyr.unique_id for lyr in self.viewer.layers}
        for key in [k for k in self.stacks if k not in live]:
            del self.stacks[key]
        if self.query_layer is not None and not self._alive(self.query_layer):
            self.query_layer = None
        self._refresh_images()

    def _refresh_images(self, event: Any = None) -> None:
        # follow the chosen layer by identity, so renaming it keeps it chosen
        current = getattr(self, "_current_uid", None)
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        layers = self._image_layers()
        for lyr in layers:
            self.image_combo.addItem(lyr.name)
        uids = [lyr.unique_id for lyr in layers]
        if current in uids:
            self.image_combo.setCurrentIndex(uids.index(current))
        elif layers:
            self.image_combo.setCurrentIndex(len(layers) - 1)
        self.image_combo.blockSignals(False)
        self._remember_image()
        self._update_controls()

    def _remember_image(self, *_: Any) -> None:
        layer = self.image_layer()
        self._current_uid = None if layer is None else layer.unique_id

    def image_layer(self) -> Image | None:
        """The image layer the widget works on (None when there is none)."""
        name = self.image_combo.currentText() if hasattr(self, "image_combo") else ""
        if name and name in self.viewer.layers and isinstance(self.viewer.layers[name], Image):
            return self.viewer.layers[name]
        return None

    def set_image(self, layer: Any) -> None:
        """Choose the image layer (by layer or name)."""
        name = layer if isinstance(layer, str) else layer.name
        idx = self.image_combo.findText(name)
        if idx < 0:
            raise ValueError(f"{name!r} is not an image layer of this viewer")
        self.image_combo.setCurrentIndex(idx)

    def _update_controls(self, *_: Any) -> None:
        running = self.jobs.running
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        weights = self.weights_combo.currentData()
        self.weights_file_row.setVisible(weights == "file")
        self.random_warning.setVisible(weights == "random")
        layer = self.image_layer()
        ndim_lead = 0
        if layer is not None:
            shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
            ndim_lead = max(0, len(shape) - 2)
        # channel axis choices follow the layer's stack axes
        want = ["none"] + [f"axis {i} ({layer.data.shape[i]})" for i in range(ndim_lead)]
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

    def _upsampler_changed(self, *_: Any) -> None:
        # each upsampler keeps the options typed for it; its defaults show greyed
        self._option_texts[self._options_for] = self.upsampler_options.text()
        self._options_for = self.upsampler_combo.currentText()
        self.upsampler_options.setText(self._option_texts.get(self._options_for, ""))
        defaults = upsampler_options(self._options_for)
        self.upsampler_options.setEnabled(bool(defaults))
        self.upsampler_options.setPlaceholderText(
            ", ".join(f"{k}={v}" for k, v in defaults.items()) or "no options"
        )

    def channel_axis(self) -> int | None:
        i = self.channel_axis_combo.currentIndex()
        return None if i <= 0 else i - 1

    def _browse_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Backbone weights", "", "Weights (*.safetensors *.pth *.pt *.bin);;All (*)"
        )
        if path:
            self.weights_path.setText(path)

    def _sign_changed(self, *_: Any) -> None:
        if self.query_layer is not None:
            _query.set_next_sign(self.query_layer, self.next_sign())

    def next_sign(self) -> str:
        return "negative" if self.negative_radio.isChecked() else "positive"

    # ----------------------------------------------------------------- run
    def settings(self) -> dict:
        """The run settings as :func:`~napari_featup.pipeline.iter_extract` keywords
        (without the image-specific contrast limits)."""
        weights = self.weights_combo.currentData()
        if weights == "file":
            weights = self.weights_path.text().strip()
        channels = self.channels_edit.text().strip()
        out = dict(
            backbone=self.backbone_combo.currentText(),
            upsampler=self.upsampler_combo.currentText(),
            weights=weights,
            device=self.device_combo.currentText(),
            precision=self.precision_combo.currentText(),
            scaling=self.norm_combo.currentData(),
        )
        options = parse_options(self.upsampler_options.text())
        if options:
            out["upsampler_options"] = options
        up_weights = self.upsampler_weights.text().strip()
        if up_weights:
            out["upsampler_weights"] = up_weights
        if channels:
            out["channels"] = [int(c) for c in channels.replace(" ", "").split(",") if c]
        return out

    def notify_error(self, message: str) -> None:
        self.last_error = message
        self.status.setText(message.splitlines()[0])
        show_error(message)

    def run(self, planes: list[Index] | None = None, add_to_stack: bool = False) -> bool:
        """Start computing features (of the displayed plane, all planes, or ``planes``).

        Returns False, with a notification saying why, when nothing was started
        (a run in progress, no image layer, bad settings).
        """
        if self.jobs.running:
            show_info("FeatUp is already running: wait for it or press Cancel.")
            return False
        self.last_error = None
        layer = self.image_layer()
        if layer is None:
            active = self.viewer.layers.selection.active
            if isinstance(active, Labels) or any(isinstance(x, Labels) for x in self.viewer.layers):
                name = active.name if isinstance(active, Labels) else "a Labels layer"
                self.notify_error(
                    f"{name!r} is a Labels layer, and FeatUp needs an Image layer. "
                    "What to do: open or add the image the labels belong to (File > Open, "
                    "or File > Open Sample > napari-featup) and pick it under Image."
                )
            else:
                self.notify_error(
                    "There is no image layer. What to do: open an image (File > Open) or a "
                    "sample (File > Open Sample > napari-featup), then press Run."
                )
            return False
        try:
            settings = self.settings()
        except UpsamplerError as exc:
            self.notify_error(
                f"{exc}. What to do: write the upsampler options as KEY=VALUE items "
                f"separated by commas (e.g. {self.upsampler_options.placeholderText()}), "
                "or leave the field empty for the defaults."
            )
            return False
        except ValueError:
            self.notify_error(
                f"Channels {self.channels_edit.text()!r} are not understood. What to do: "
                "give three channel indices separated by commas (e.g. 0,1,2) or one index."
            )
            return False
        if settings["weights"] == "":
            self.notify_error(
                "Weights: local file is chosen but no file is given. What to do: press … "
                "and pick a weights file, or choose pretrained or random weights."
            )
            return False
        channel_axis = self.channel_axis()
        try:
            geometry = image_geometry(layer, channel_axis)
        except ValueError as exc:
            self.notify_error(f"{exc}. What to do: pick a 2-D image or a stack of them.")
            return False
        stride = get_spec(settings["backbone"]).stride
        h, w = geometry.size
        if h < stride or w < stride:
            self.notify_error(
                f"Image {layer.name!r} is {h} x {w} px, smaller than one {stride} px patch "
                f"of backbone {settings['backbone']!r}. What to do: use a larger image (at "
                "least a few patches across), or upsample it first."
            )
            return False
        if settings["scaling"] == "contrast_limits":
            settings["contrast_limits"] = [float(v) for v in layer.contrast_limits]
        config = dict(settings, image=layer.name, channel_axis=channel_axis)
        stack = self.stacks.get(layer.unique_id)
        reuse = add_to_stack and stack is not None and stack.config == config
        if planes is None:
            if geometry.leading and self.slices_combo.currentData() == "all":
                planes = geometry.planes()
            else:
                planes = [current_plane(self.viewer, layer, geometry, channel_axis)]
        if reuse:
            planes = [p for p in planes if p not in stack.results]
            if not planes:
                return False
        request = RunRequest(
            data=layer.data[0] if getattr(layer, "multiscale", False) else layer.data,
            planes=planes,
            extract=settings,
            rgb=layer.rgb,
            channel_axis=channel_axis,
            pca=stack.pca if reuse else None,
        )

        def done(status: str, out: RunOutput | None) -> None:
            self._on_run_done(status, out, layer, geometry, config, stack if reuse else None)

        self.status.setText("starting…")
        started = self.jobs.start(request, on_done=done)
        self._update_controls()
        return started

    def cancel(self) -> None:
        """Stop the run at its next step; nothing it computed is shown."""
        if self.jobs.running:
            self.status.setText("cancelling…")
            self.jobs.cancel()

    def _on_run_done(
        self,
        status: str,
        out: RunOutput | None,
        layer: Image,
        geometry: PlaneGeometry,
        config: dict,
        stack: FeatureStack | None,
    ) -> None:
        try:
            if status == "cancelled":
                self.status.setText("Cancelled: the viewer is unchanged.")
                show_info("FeatUp run cancelled; no layers were changed.")
            elif status == "error":
                self.notify_error(explain(out.error, f"computing features of {layer.name!r}"))
            elif not self._alive(layer):
                status = "cancelled"
                self.status.setText(f"Layer {layer.name!r} was removed; results dropped.")
            else:
                self._show_results(out, layer, geometry, config, stack)
        except Exception as exc:  # noqa: BLE001 - never let a result crash the viewer
            status = "error"
            self.notify_error(explain(exc, f"showing the features of {layer.name!r}"))
        finally:
            self._update_controls()
            self.run_finished.emit(status)
        if status == "done":
            self._maybe_follow_slider()

    def _show_results(
        self,
        out: RunOutput,
        layer: Image,
        geometry: PlaneGeometry,
        config: dict,
        stack: FeatureStack | None,
    ) -> None:
        if stack is None:
            stack = FeatureStack(layer.name, geometry, config)
        stack.add_planes(out.results, out.pca, out.colours)
        self.stacks[layer.unique_id] = stack
        for data, kwargs, ltype in stack.layer_data():
            upsert_layer(self.viewer, data, kwargs, ltype)
        meta = stack.metadata
        msg = (
            f"{layer.name}: {meta['backbone']} features {meta['grid'][0]} x "
            f"{meta['grid'][1]} x {meta['dim']}, upsampled with {meta['upsampler']} "
            f"({len(stack.results)} plane(s))."
        )
        if meta.get("random_weights"):
            msg += " RANDOM WEIGHTS: these features mean nothing."
            show_warning(msg)
        self.status.setText(msg)
        if self.query_layer is not None and len(self.query_layer.data):
            self.update_similarity()
        self.viewer.layers.selection.active = layer

    # ---------------------------------------------------------- similarity
    def current_stack(self) -> FeatureStack | None:
        layer = self.image_layer()
        return None if layer is None else self.stacks.get(layer.unique_id)

    def ensure_query_layer(self) -> Any:
        """The "FeatUp query" points layer (created over the image when missing)."""
        layer = self.image_layer()
        if self.query_layer is None or not self._alive(self.query_layer):
            if layer is None:
                return None
            selected = list(self.viewer.layers.selection)
            self.query_layer = _query.make_query_layer(self.viewer, layer)
            _query.set_next_sign(self.query_layer, self.next_sign())
            self.query_layer.events.data.connect(self._on_points_changed)
            self.viewer.layers.selection = set(selected)  # keep the user's selection
        return self.query_layer

    def activate_query_layer(self) -> None:
        q = self.ensure_query_layer()
        if q is None:
            show_info("Run FeatUp on an image first, then add query points.")
            return
        self.viewer.layers.selection.active = q
        q.mode = "add"

    def _query_layer_for_click(self) -> Any:
        if self.current_stack() is None:
            return None
        return self.ensure_query_layer()

    def _flip_selected(self) -> None:
        if self.query_layer is not None:
            _query.flip_selected(self.query_layer)

    def clear_points(self) -> None:
        if self.query_layer is not None and len(self.query_layer.data):
            self.query_layer.data = np.empty((0, self.query_layer.ndim))

    def _on_points_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing"):  # adding / removing / changing: wait for the end
            return
        if self.query_layer is not None:
            _query.recolour(self.query_layer)
        self.update_similarity()

    def update_similarity(self) -> bool:
        """Recompute the query from the points and refresh "<image> similarity" (the
        displayed plane now, other planes when the slider reaches them)."""
        stack, layer = self.current_stack(), self.image_layer()
        if stack is None or self.query_layer is None:
            return False
        try:
            pos, neg = _query.split_points(self.query_layer, layer)
            ca = stack.config.get("channel_axis")
            if ca is not None:
                pos = [p[:ca] + p[ca + 1 :] for p in pos]
                neg = [p[:ca] + p[ca + 1 :] for p in neg]
            ignored = stack.set_query(pos, neg)
            if ignored:
                show_info(
                    f"{len(ignored)} query point(s) lie outside the image or on slices "
                    "without features and were ignored."
                )
            plane = current_plane(self.viewer, layer, stack.geometry, ca)
            stack.update_similarity(plane)
            data, kwargs, ltype = stack.similarity_layer_data(plane)
            new = kwargs["name"] not in self.viewer.layers
            upsert_layer(self.viewer, data, kwargs, ltype)
            if new:  # keep the query points visible above the heatmap
                layers = self.viewer.layers
                layers.move(layers.index(self.query_layer.name), len(layers))
        except Exception as exc:  # noqa: BLE001
            self.notify_error(explain(exc, "computing the similarity"))
            return False
        self.similarity_updated.emit()
        return True

    def make_mask(self, threshold: float | None = None) -> Any:
        """Labels layer "<image> similarity mask": similarity >= threshold."""
        stack = self.current_stack()
        if stack is None or stack.query is None:
            show_info("Add a query point first (Ctrl-click the image after a run).")
            return None
        t = float(self.threshold_spin.value() if threshold is None else threshold)
        return upsert_layer(self.viewer, *stack.mask_layer_data(t))

    def _on_slider(self, event: Any = None) -> None:
        stack, layer = self.current_stack(), self.image_layer()
        if stack is None or layer is None or not stack.geometry.leading:
            return
        plane = current_plane(self.viewer, layer, stack.geometry, stack.config.get("channel_axis"))
        if plane in stack.results:
            if plane in stack.stale_similarity and stack.query is not None:
                stack.update_similarity(plane)
                name = f"{stack.image_name} similarity"
                if name in self.viewer.layers:
                    self.viewer.layers[name].refresh()
        else:
            self._maybe_follow_slider()

    def _maybe_follow_slider(self) -> None:
        stack, layer = self.current_stack(), self.image_layer()
        if (
            stack is None
            or layer is None
            or not stack.geometry.leading
            or not self.follow_slider.isChecked()
            or self.jobs.running
        ):
            return
        plane = current_plane(self.viewer, layer, stack.geometry, stack.config.get("channel_axis"))
        if plane not in stack.results:
            self.run(planes=[plane], add_to_stack=True)

    # -------------------------------------------------------------- export
    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """Export the displayed plane's features, PCA and similarity to ``path``
        (.zarr, .npz, .tif or .npy). Raises FileExistsError unless ``overwrite``."""
        stack, layer = self.current_stack(), self.image_layer()
        if stack is None:
            raise ValueError("nothing to export: run FeatUp on this image first")
        plane = current_plane(self.viewer, layer, stack.geometry, stack.config.get("channel_axis"))
        if plane not in stack.results:
            plane = sorted(stack.results)[0]
        return export_stack_plane(
            path, stack, plane, self.export_highres.isChecked(), overwrite=overwrite
        )

    def _export_dialog(self) -> None:
        if self.current_stack() is None:
            show_info("Nothing to export yet: press Run first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export FeatUp features",
            f"{self.image_layer().name}_features.zarr",
            "Zarr (*.zarr);;NumPy archive (*.npz);;TIFF (*.tif);;NumPy array (*.npy)",
            options=QFileDialog.DontConfirmOverwrite,
        )
        if not path:
            return
        overwrite = False
        if Path(path).exists():
            answer = QMessageBox.question(
                self,
                "Overwrite?",
                f"{path} exists. Replace it?",
                QMessageBox.Yes | QMessageBox.No,
                QMessageBox.No,
            )
            if answer != QMessageBox.Yes:
                return
            overwrite = True
        try:
            out = self.export(path, overwrite=overwrite)
        except Exception as exc:  # noqa: BLE001
            self.notify_error(explain(exc, f"exporting to {path}"))
            return
        show_info(f"Exported FeatUp features to {out}")

    # ----------------------------------------------------------- layer names
    def layer_names(self) -> dict[str, str]:
        """Names of the layers the current stack shows."""
        stack = self.current_stack()
        if stack is None:
            return {}
        n = stack.image_name
        return {
            "lowres": f"{n} PCA low-res",
            "full": pca_name(n, stack.upsampler),
            "similarity": f"{n} similarity",
            "mask": f"{n} similarity mask",
        }
