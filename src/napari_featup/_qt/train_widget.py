"""The "Train JBU" dock widget: train a FeatUp JBU stack on image layers or a folder.

Thin: it collects the settings, runs
:func:`~napari_featup.upsamplers.featup_jbu.train.iter_train_jbu` in a napari thread
worker (started with ``worker.start()``, never ``run()``; every Qt object is touched in
the slots, which run on the GUI thread), shows progress and loss, and cancels on
request (the trainer then saves a resumable checkpoint beside the output). A finished
checkpoint goes into :mod:`napari_featup.session.recent`, which the FeatUp widget offers
as upsampler weights (:func:`attach_recent_menu`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..backbones import list_backbones
from ..progress import Progress
from ..session.messages import explain
from ..session.recent import add_recent_checkpoint, on_recent_changed, recent_checkpoints

_BAR = 1000  # progress bar ticks


def _row(*widgets: QWidget) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


class TrainJBUWidget(QWidget):
    """Train a JBU stack for a backbone on the user's images (FeatUp's objective).

    ``finished(status)`` fires after a run ends: ``done``, ``cancelled`` or ``error``.
    """

    finished = Signal(str)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._worker = None
        self._cancelled = False
        self._result = None
        self._error: BaseException | None = None
        #: further trainer options (TrainConfig fields) for scripts and tests
        self.extra_options: dict[str, Any] = {}
        lay = QVBoxLayout(self)
        form = QFormLayout()
        lay.addLayout(form)

        self.source_combo = QComboBox()
        self.source_combo.addItem("Image layers", "layers")
        self.source_combo.addItem("Folder or glob", "folder")
        form.addRow("Train on", self.source_combo)
        self.layer_list = QListWidget()
        self.layer_list.setSelectionMode(QAbstractItemView.MultiSelection)
        self.layer_list.setMaximumHeight(90)
        self.layer_list.setToolTip("Image layers to train on (stacks give one image per plane)")
        form.addRow("", self.layer_list)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("folder of images, or a glob like cells/*.tif")
        self.folder_browse = QPushButton("…")
        self.folder_browse.setMaximumWidth(30)
        self.folder_row = _row(self.folder_edit, self.folder_browse)
        form.addRow("", self.folder_row)

        self.backbone_combo = QComboBox()
        self.backbone_combo.addItems(list_backbones())
        self.backbone_combo.setCurrentText("dinov2")
        self.weights_combo = QComboBox()
        self.weights_combo.addItem("pretrained", "pretrained")
        self.weights_combo.addItem("random (untrained: code test only)", "random")
        form.addRow("Backbone", self.backbone_combo)
        form.addRow("Weights", self.weights_combo)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(500)
        self.steps_spin.setToolTip("Optimiser steps; each is 4 images x 5 jittered views")
        form.addRow("Steps", self.steps_spin)
        self.size_spin = QSpinBox()
        self.size_spin.setRange(32, 1024)
        self.size_spin.setSingleStep(16)
        self.size_spin.setValue(224)
        self.size_spin.setToolTip("Crop side in px (FeatUp: 224); memory grows with its square")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 64)
        self.batch_spin.setValue(4)
        self.batch_spin.setToolTip("Images per step (FeatUp: 4)")
        form.addRow("Crop px / batch", _row(self.size_spin, self.batch_spin))
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        form.addRow("Device", self.device_combo)
        self.init_edit = QLineEdit()
        self.init_edit.setPlaceholderText("optional: FeatUp .ckpt to fine-tune")
        form.addRow("Start from", self.init_edit)
        self.out_edit = QLineEdit(str(Path.home() / "featup_jbu_trained.ckpt"))
        self.out_browse = QPushButton("…")
        self.out_browse.setMaximumWidth(30)
        form.addRow("Output", _row(self.out_edit, self.out_browse))

        self.train_button = QPushButton("Train")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        lay.addWidget(_row(self.train_button, self.cancel_button))
        self.bar = QProgressBar()
        self.bar.setRange(0, _BAR)
        self.bar.setValue(0)
        lay.addWidget(self.bar)
        self.status = QLabel("Ready")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.source_combo.currentIndexChanged.connect(self._source_changed)
        self.folder_browse.clicked.connect(self._browse_folder)
        self.out_browse.clicked.connect(self._browse_out)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()
        self._source_changed()

    # -- settings ------------------------------------------------------------------------

    def _source_changed(self, *_: Any) -> None:
        layers = self.source_combo.currentData() == "layers"
        self.layer_list.setVisible(layers)
        self.folder_row.setVisible(not layers)

    def _refresh_layers(self, *_: Any) -> None:
        chosen = {it.text() for it in self.layer_list.selectedItems()}
        self.layer_list.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                item = QListWidgetItem(layer.name)
                self.layer_list.addItem(item)
                item.setSelected(layer.name in chosen or not chosen)

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of training images")
        if path:
            self.folder_edit.setText(path)

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Trained JBU checkpoint", "", "*.ckpt")
        if path:
            self.out_edit.setText(path)

    def images(self) -> Any:
        """What to train on: the selected layers' data, or the folder/glob text."""
        if self.source_combo.currentData() == "folder":
            text = self.folder_edit.text().strip()
            return [text] if text else []
        names = {it.text() for it in self.layer_list.selectedItems()}
        out = []
        for layer in self.viewer.layers:
            if isinstance(layer, Image) and layer.name in names:
                data = layer.data[0] if layer.multiscale else layer.data
                out.append(data)
        return out

    def request(self) -> dict[str, Any]:
        """The trainer's keyword arguments from the form."""
        init = self.init_edit.text().strip() or None
        return {
            "backbone": self.backbone_combo.currentText(),
            "backbone_weights": self.weights_combo.currentData(),
            "steps": self.steps_spin.value(),
            "device": self.device_combo.currentText(),
            "init": init,
            "out": self.out_edit.text().strip(),
            "size": self.size_spin.value(),
            "batch_size": self.batch_spin.value(),
            **self.extra_options,
        }

    # -- running -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._worker is not None

    def start(self) -> bool:
        """Start training with the form's settings; False when one is running or the
        settings are incomplete (the status line says why)."""
        if self.running:
            return False
        from ..upsamplers.featup_jbu.train import iter_train_jbu  # torch: imported when used

        req = self.request()
        images = self.images()
        if not images:
            self.status.setText("Choose image layers or a folder to train on.")
            return False
        if not req["out"]:
            self.status.setText("Choose an output file.")
            return False
        self._cancelled, self._result, self._error = False, None, None
        self._request = req
        kwargs = {k: v for k, v in req.items() if k != "backbone"}
        self._stop = threading.Event()
        gen = iter_train_jbu(images, req["backbone"], **kwargs)  # runs nothing until iterated
        worker = create_worker(_until_stopped, gen, self._stop, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.bar.setValue(0)
        self.status.setText("Starting…")
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop after the current half step; a resumable checkpoint is kept."""
        if self._worker is not None:
            self._cancelled = True
            self.status.setText("Cancelling…")
            # not worker.quit(): napari would drop the generator without closing it, and
            # the trainer saves its resumable checkpoint when it is closed
            self._stop.set()

    def _on_yielded(self, ev: Progress) -> None:
        if self._worker is None:
            return
        self.bar.setValue(round(ev.fraction * _BAR))
        loss = "" if ev.loss is None or math.isnan(ev.loss) else f", loss {ev.loss:.4g}"
        if ev.stage == "train":
            self.status.setText(f"Step {ev.done:g} of {ev.total:g}{loss}")
        else:
            self.status.setText(ev.message)

    def _on_returned(self, result: Any) -> None:
        self._result = result

    def _on_errored(self, exc: BaseException) -> None:
        self._error = exc

    def _on_aborted(self) -> None:
        self._cancelled = True

    def _on_finished(self) -> None:
        self._worker = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        out = self._request["out"]
        if self._error is not None:
            status = "error"
            self.status.setText(f"Failed: {explain(self._error)}")
            show_error(f"Train JBU: {explain(self._error)}")
        elif self._cancelled or self._result is None:
            status = "cancelled"
            self.status.setText(f"Cancelled; resumable checkpoint: {out}.partial")
        else:
            status = "done"
            curve = self._result.info.get("loss_curve", [])
            last = f", final loss {curve[-1]:.4g}" if curve else ""
            add_recent_checkpoint(out, self._request["backbone"],
                                  f"{Path(out).name} ({self._request['backbone']}, "
                                  f"{len(curve)} steps)")  # fmt: skip
            self.bar.setValue(_BAR)
            self.status.setText(
                f"Saved {out}{last}. In the FeatUp widget: upsampler featup-jbu, weights ▾"
            )
            show_info(f"Trained JBU saved to {out}")
        self.finished.emit(status)


def _until_stopped(gen: Generator, stop: threading.Event) -> Generator:
    """Relay ``gen`` until ``stop`` is set, then close it (in the worker thread, so the
    trainer's cancel path -- saving its checkpoint -- runs there) and return None."""
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                return done.value
            yield ev
            if stop.is_set():
                return None
    finally:
        gen.close()


def attach_recent_menu(weights_edit: QLineEdit, upsampler_combo: QComboBox) -> QToolButton:
    """A ▾ button listing :func:`recent_checkpoints`; choosing one fills ``weights_edit``
    and selects ``featup-jbu`` in ``upsampler_combo``. Returns the button to lay out."""
    button = QToolButton()
    button.setText("▾")
    button.setToolTip("Recently trained JBU checkpoints (Train JBU widget)")
    button.setPopupMode(QToolButton.InstantPopup)
    menu = QMenu(button)
    button.setMenu(menu)

    def rebuild() -> None:
        menu.clear()
        items = recent_checkpoints()
        button.setVisible(bool(items))  # shown once there is something to offer
        for rc in items:
            act = menu.addAction(rc.label)
            act.setToolTip(rc.path)
            act.triggered.connect(lambda _=False, p=rc.path: choose(p))

    def choose(path: str) -> None:
        upsampler_combo.setCurrentText("featup-jbu")
        weights_edit.setText(path)

    unsubscribe = on_recent_changed(rebuild)
    button.destroyed.connect(lambda *_: unsubscribe())
    rebuild()
    return button


__all__ = ["TrainJBUWidget", "attach_recent_menu"]
