"""The Text row of the Similarity section: prompts -> heatmaps and a zero-shot label map.

Typing prompts (comma- or line-separated) and pressing Enter encodes each new prompt once,
in a napari thread worker (the text tower is loaded from the image tower's checkpoint),
then adds one heatmap layer "<image> text: <prompt>" per prompt on the GUI thread, at a
click's cost, from the plane's compact field (:class:`~napari_featup.text.StackText`
does the computing). Maps that are not exact that way are then computed exactly in the
background (:class:`~napari_featup._qt.refine.Refiner`, the library's path) and replace
the fast ones in the same layers and in the label map; a new Enter, a new run or
closing the widget drops a refinement still running. "Label map" adds a Labels layer
of the best prompt per pixel, 0 where the best similarity is below the threshold, with
a legend. Backbones without a text tower disable the row.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..io import META_KEY
from ..session.geometry import current_plane
from ..session.messages import explain
from ..text import TEXT_PARTNERS, StackText, has_text_tower, parse_prompts, text_backbones
from ..text.queries import encoder_for
from ..text.refine import Refinement, apply_refinement, plan_refinement
from .refine import Refiner
from .viewer_layers import StackGetter, upsert_layer

TEMPLATE_CHOICES = (
    ("maskclip", "MaskCLIP templates (85, averaged)"),
    ("imagenet", "CLIP ImageNet templates (80, averaged)"),
    ("plain", "plain (the prompt as typed)"),
)


class PromptEdit(QPlainTextEdit):
    """A two-line prompt box: Enter submits, Shift+Enter starts a new line."""

    submitted = Signal()

    def keyPressEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        enter = event.key() in (Qt.Key_Return, Qt.Key_Enter)
        if enter and not event.modifiers() & Qt.ShiftModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


def _encode(metadata: dict, prompts: list[str], templates: str) -> Any:
    """Worker body: the text tower (loaded once) and the prompts' embeddings (cached)."""
    device = str(metadata.get("device", "cpu"))
    enc = encoder_for(metadata, device if device.startswith("cuda") else "cpu")
    enc.encode(prompts, templates)
    return enc


class TextPanel(QWidget):
    """Prompts, template choice, Label map button, threshold and legend.

    ``text_updated`` fires after the heatmap or label layers changed. ``refined(status)``
    ends each background refinement: ``"done"`` once the heatmap layers (and a label
    map of these prompts) hold the exact maps, ``"dropped"`` for a stale one (nothing
    written), ``"error"``. ``backbone_choice()`` gives the backbone chosen in the
    settings (used before a run).
    """

    text_updated = Signal()
    refined = Signal(str)

    def __init__(
        self,
        viewer: Any,
        current: StackGetter,
        notify_error: Callable[[str], None],
        backbone_choice: Callable[[], str],
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.viewer = viewer
        self._current = current
        self._notify_error = notify_error
        self._backbone_choice = backbone_choice
        self.text: StackText | None = None
        self._worker: Any = None
        #: (the StackText, threshold) of the label map in the viewer
        self._labels_for: tuple[StackText, float | None] | None = None
        self._refiner = Refiner(self)
        self._refiner.finished.connect(self._on_refined)
        self._refiner.dropped.connect(lambda _: self._refine_ended("dropped"))

        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.title = QLabel("Text")
        self.prompt_edit = PromptEdit()
        self.prompt_edit.setPlaceholderText("nucleus, membrane, background  (Enter)")
        self.prompt_edit.setFixedHeight(3 * self.prompt_edit.fontMetrics().height())
        row.addWidget(self.title)
        row.addWidget(self.prompt_edit, 1)
        box.addLayout(row)
        opts = QHBoxLayout()
        self.templates_combo = QComboBox()
        for key, label in TEMPLATE_CHOICES:
            self.templates_combo.addItem(label, key)
        self.label_button = QPushButton("Label map")
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(-1.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setSpecialValueText("off")  # at -1: every pixel gets a prompt
        self.threshold_spin.setValue(-1.0)
        self.threshold_spin.setToolTip(
            "Label map: pixels whose best similarity is below this are 'none of these' (0)"
        )
        box.addWidget(self.templates_combo)  # a row of its own: the dock stays narrow
        opts.addWidget(self.label_button)
        opts.addWidget(QLabel("none below"))
        opts.addWidget(self.threshold_spin)
        box.addLayout(opts)
        self.legend = QLabel("")  # one line per label: no word wrap, so its height is exact
        self.legend.setTextFormat(Qt.RichText)
        box.addWidget(self.legend)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        box.addWidget(self.status)

        self.prompt_edit.submitted.connect(self.run_text)
        self.label_button.clicked.connect(lambda: self.make_label_map())
        self.viewer.dims.events.current_step.connect(self._on_slider)
        self.update_state()

    # ----------------------------------------------------------------- state
    def _backbone(self) -> str:
        stack, _ = self._current()
        return str(stack.metadata.get("backbone")) if stack is not None else self._backbone_choice()

    def update_state(self, *_: Any) -> None:
        """Enable the row for backbones with a text tower; say which have one otherwise."""
        backbone = self._backbone()
        ok = has_text_tower(backbone)
        for w in (self.title, self.prompt_edit, self.templates_combo, self.label_button):
            w.setEnabled(ok)
        self.threshold_spin.setEnabled(ok)
        partner = TEXT_PARTNERS.get(backbone)
        tip = (
            "Prompts, comma- or line-separated (Shift+Enter for a new line); Enter shows one "
            "heatmap per prompt"
            if ok
            else f"Text queries need a backbone with a text tower: {', '.join(text_backbones())}"
            f" (this is {backbone}" + (f"; choose {partner} for its text)" if partner else ")")
        )
        for w in (self, self.title, self.prompt_edit):
            w.setToolTip(tip)

    def prompts(self) -> list[str]:
        """The prompts as typed, parsed."""
        return parse_prompts(self.prompt_edit.toPlainText())

    def set_prompts(self, text: str) -> None:
        self.prompt_edit.setPlainText(text)

    def busy(self) -> bool:
        """Whether prompts are being encoded."""
        return self._worker is not None

    # ------------------------------------------------------------------ text
    def run_text(self) -> bool:
        """Encode the prompts (in a worker) and show their heatmaps; False when nothing
        was started (no features, no text tower, no prompts, already encoding)."""
        stack, _ = self._current()
        prompts = self.prompts()
        if stack is None:
            show_info("Run FeatUp with a CLIP-family backbone first, then type prompts.")
            return False
        if not has_text_tower(self._backbone()) or not prompts or self.busy():
            return False
        from napari.qt.threading import create_worker

        templates = self.templates_combo.currentData()
        self._refiner.cancel()  # the maps being refined are about to be replaced
        self.status.setText(f"encoding {len(prompts)} prompt(s)…")
        worker = self._worker = create_worker(
            _encode, dict(stack.metadata), prompts, templates, _start_thread=False
        )
        worker.returned.connect(lambda enc: self._encoded(worker, stack, prompts, enc, templates))
        worker.errored.connect(
            lambda exc: self._notify_error(explain(exc, "encoding the text prompts"))
        )
        worker.finished.connect(lambda: self._worker_done(worker))
        worker.start()
        return True

    def _encoded(self, worker: Any, stack: Any, prompts: list[str], enc: Any, templates: str):
        # done encoding: the next Enter may start at once, before the worker's own
        # `finished` arrives (a user quick on the key; the maps are already shown)
        if self._worker is worker:
            self._worker = None
        self._show(stack, prompts, enc, templates)

    def _worker_done(self, worker: Any) -> None:
        if self._worker is worker:
            self._worker = None
        if self._worker is None:  # not when a newer Enter is encoding
            self.status.setText("computing the exact maps…" if self._refiner.busy else "")

    def _show(self, stack: Any, prompts: list[str], enc: Any, templates: str) -> None:
        try:
            if self._current()[0] is not stack:  # another run or image since Enter
                return
            self.text = StackText.build(stack, prompts, enc, templates, previous=self.text)
            self.show_heatmaps()
            self._refine()
        except Exception as exc:  # noqa: BLE001 - never let a prompt crash the viewer
            self._notify_error(explain(exc, "computing the text heatmaps"))

    def _plane(self) -> tuple[int, ...]:
        stack, layer = self._current()
        return current_plane(
            layer, stack.geometry, self.viewer.dims.point, stack.config.get("channel_axis")
        )

    def show_heatmaps(self) -> None:
        """Add or refresh one heatmap layer per prompt; drop those of removed prompts."""
        text = self.text
        data = text.layer_data(self._plane())
        keep = {kw["name"] for _, kw, _ in data}
        for lyr in list(self.viewer.layers):
            meta = lyr.metadata.get(META_KEY, {})
            mine = meta.get("layer") == "text-similarity"
            if mine and meta.get("source_layer") == text.stack.image_name and lyr.name not in keep:
                self.viewer.layers.remove(lyr)
        for d, kwargs, ltype in data:
            upsert_layer(self.viewer, d, kwargs, ltype)
        self.text_updated.emit()

    def _on_slider(self, event: Any = None) -> None:
        stack, _ = self._current()
        if self.text is None or stack is not self.text.stack or not stack.geometry.leading:
            return
        plane = self._plane()
        if plane in self.text.stale and plane in stack.results:
            self.text.update(plane)
            for _, kwargs, _ in self.text.layer_data(plane):
                if kwargs["name"] in self.viewer.layers:
                    self.viewer.layers[kwargs["name"]].refresh()
            self._refine(plane)

    def on_run_finished(self, status: str) -> None:
        """After a run: follow the new backbone; re-answer the prompts on new features
        (and refine them again: the run's start dropped the refinement)."""
        self.update_state()
        stack, _ = self._current()
        if self.text is None or stack is None:
            return
        if stack is self.text.stack:
            if status == "done":
                self.text.refresh()  # planes were added to the same stack
                self.show_heatmaps()
            self._refine()
        elif status == "done" and has_text_tower(self._backbone()):
            self.run_text()

    # ------------------------------------------------------------ refinement
    def _refine(self, plane: tuple[int, ...] | None = None) -> bool:
        """Compute the plane's fast maps exactly in the background; False when they
        are exact already (bilinear features, a complete basis)."""
        ref = plan_refinement(self.text, self._plane() if plane is None else plane)
        if ref is None:
            return False
        self._refiner.request(ref)
        self.status.setText("computing the exact maps…")
        return True

    def refining(self) -> bool:
        """Whether exact maps are being computed (or wait to be)."""
        return self._refiner.busy

    def cancel_refinement(self) -> None:
        """Drop the refinement in progress (a run starts: its maps may go stale)."""
        self._refiner.cancel()

    def stop_refinement(self) -> None:
        """Drop the refinement and take no more (the widget is closing)."""
        self._refiner.close()

    def _refine_ended(self, status: str) -> None:
        if not self._refiner.busy and self._worker is None:
            self.status.setText("")
        self.refined.emit(status)

    def _on_refined(self, ref: Refinement, maps: Any, error: Any) -> None:
        """Exact maps arrived: into the heatmap layers and the label map, if still
        those of the current prompts and features."""
        if error is not None:
            self._notify_error(explain(error, "computing the exact text maps"))
            return self._refine_ended("error")
        if ref.text is not self.text or not apply_refinement(ref, maps):
            return self._refine_ended("dropped")
        try:
            for data, kwargs, ltype in ref.text.layer_data(ref.plane):
                if kwargs["name"] in self.viewer.layers:  # one the user removed stays so
                    upsert_layer(self.viewer, data, kwargs, ltype)
            if self._labels_for is not None and self._labels_for[0] is ref.text:
                self._update_label_map(self._labels_for[1])
        except Exception as exc:  # noqa: BLE001 - never let a refinement crash the viewer
            self._notify_error(explain(exc, "showing the exact text maps"))
            return self._refine_ended("error")
        self.text_updated.emit()
        self._refine_ended("done")

    # ------------------------------------------------------------- label map
    def threshold(self) -> float | None:
        v = float(self.threshold_spin.value())
        return None if v <= self.threshold_spin.minimum() else v

    def make_label_map(self, threshold: float | None = None) -> Any:
        """Labels layer "<image> text labels" (argmax over prompts, thresholded)."""
        stack, _ = self._current()
        if self.text is None or stack is not self.text.stack:
            show_info("Type prompts and press Enter first.")
            return None
        t = self.threshold() if threshold is None else threshold
        (data, kwargs, ltype), legend = self.text.label_layer_data(t)
        name = kwargs["name"]
        if name in self.viewer.layers:  # colours and features follow the prompts: rebuild
            self.viewer.layers.remove(name)
        layer = upsert_layer(self.viewer, data, kwargs, ltype)
        self._labels_for = (self.text, t)
        self._show_legend(legend)
        self.text_updated.emit()
        return layer

    def _update_label_map(self, threshold: float | None) -> None:
        """The label map of the current prompts again, in place (after a refinement:
        same prompts, so same colours and features)."""
        (data, kwargs, _), legend = self.text.label_layer_data(threshold)
        if kwargs["name"] not in self.viewer.layers:
            return
        layer = self.viewer.layers[kwargs["name"]]
        layer.data = data
        layer.metadata = kwargs["metadata"]
        self._show_legend(legend)

    def _show_legend(self, legend: list) -> None:
        self.legend.setText(legend_html(legend))
        self.legend.setMinimumHeight(self.legend.sizeHint().height())


def legend_html(legend: list) -> str:
    """Coloured squares and prompts with their share of the pixels."""
    parts = []
    for e in legend:
        r, g, b, a = (int(round(255 * c)) for c in e.colour)
        swatch = f'<span style="color: rgb({r},{g},{b})">■</span>' if a else "<span>□</span>"
        parts.append(f"{swatch} {e.label}: {html.escape(e.prompt)} ({100 * e.fraction:.0f}%)")
    return "<br>".join(parts)
