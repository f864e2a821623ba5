"""The "FeatUp" dock widget: settings, Run/Cancel, similarity query and export.

Thin by design: it composes the panels (:mod:`.settings_panel`,
:mod:`.similarity_panel`, :mod:`.export_panel`), turns the settings into a checked
run with :func:`~napari_featup.session.request.plan_run`, hands the request to the
:class:`~.runner.JobController` (a napari thread worker) and puts the returned
features into the viewer, on the GUI thread, through a
:class:`~napari_featup.session.stack.FeatureStack`.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer, Signal
from qtpy.QtWidgets import QMainWindow, QPushButton, QScrollArea, QWidget

from .._reader_associations import associate_feature_files
from ..errors import ImageError, SettingsError
from ..progress import Progress
from ..session.estimate import confirmation_text, estimate_for
from ..session.geometry import Index, current_plane
from ..session.large import LargeStack
from ..session.messages import explain
from ..session.request import PlannedRun, plan_run
from ..session.run import RunOutput, progress_text
from ..session.stack import FeatureStack
from . import query_layer as _query
from .export_panel import ExportPanel
from .prerun import PreRun, wrapped_label
from .runner import JobController
from .sections import dock_sections, fit_width
from .settings_panel import SettingsPanel
from .similarity_panel import SimilarityPanel
from .text_panel import TextPanel
from .viewer_layers import (
    arrange_results,
    input_image_layers,
    is_alive,
    layer_by_uid,
    remove_replaced,
    set_results_shown,
    upsert_layer,
)

#: panel controls also reachable on the dock (scripts, tests and the demo use them)
_CONTROLS = {
    "settings_panel": (
        "image_combo backbone_combo upsampler_combo upsampler_weights upsampler_weights_combo "
        "upsampler_options "
        "weights_combo weights_path random_warning device_combo precision_combo norm_combo "
        "channel_axis_combo channels_edit slices_combo follow_slider"
    ),
    "similarity_panel": "threshold_spin positive_radio negative_radio",
    "export_panel": "export_button export_highres open_button",
}


class FeatUpWidget(QWidget):
    """Compute backbone features of an image layer; show PCA and similarity layers.

    Signals for scripts and tests: ``run_finished(status)`` after a run's layers are
    in the viewer (status ``done``, ``error`` or ``cancelled``), ``similarity_updated``
    after the similarity layer changed, ``warmed_up(result)`` after the warm-up
    (:mod:`napari_featup.session.warmup`) that the widget starts when it opens.
    """

    run_finished = Signal(str)
    similarity_updated = Signal()
    warmed_up = Signal(dict)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        associate_feature_files()  # napari opens *.featup.* files with this plugin
        self.jobs = JobController(self)
        #: FeatureStack per image layer (keyed by layer.unique_id), the latest run's
        self.stacks: dict[Any, FeatureStack] = {}
        self.last_error: str | None = None
        #: run settings whose random-weights warning was shown (once per setting)
        self._warned_random: set[str] = set()
        #: result layers hidden while the displayed slice has no features
        self._hidden: set = set()
        self._shown_similarity = False

        self.settings_panel = SettingsPanel(self)
        self.similarity_panel = SimilarityPanel(self.viewer, self._current, self.notify_error)
        self.export_panel = ExportPanel(self.viewer, self._current, self.notify_error)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.status = wrapped_label()
        self.prerun = PreRun(
            self.settings_panel, self.image_layer, lambda: self.viewer.dims.point, self
        )
        self.estimate_label, self.warm_up = self.prerun.label, self.prerun.warm_up
        self.request_warm_up = self.prerun.request_warm_up
        run_rows = [self.settings_panel.run_form, (self.run_button, self.cancel_button)]
        self.sections = dock_sections(
            self,
            {
                "Run": (run_rows + [self.estimate_label, self.status], True),
                # opens with the first results, so the four titles fit at first
                "Similarity": ([self.similarity_panel], False),
                "Export": ([self.export_panel], False),
                "Advanced": ([self.settings_panel.advanced_form], False),
            },
        )
        for panel, names in _CONTROLS.items():
            for name in names.split():
                setattr(self, name, getattr(getattr(self, panel), name))
        self.text_panel = TextPanel(  # the Text row of the Similarity section
            self.viewer, self._current, self.notify_error, self.settings_panel.backbone
        )
        self.similarity_panel.layout().addWidget(self.text_panel)
        self.backbone_combo.currentIndexChanged.connect(self.text_panel.update_state)
        self.settings_panel.changed.connect(self.text_panel.update_state)
        self.run_finished.connect(self.text_panel.on_run_finished)
        self.jobs.started.connect(self.text_panel.cancel_refinement)  # maps may go stale
        fit_width(self.findChild(QScrollArea))  # with every row in place

        self.prerun.warmed_up.connect(self.warmed_up)
        self.run_button.clicked.connect(lambda: self.run())
        self.cancel_button.clicked.connect(self.cancel)
        self.settings_panel.changed.connect(self._update_controls)
        self.settings_panel.changed.connect(self.request_warm_up)
        self.similarity_panel.similarity_updated.connect(self.similarity_updated)
        self.jobs.started.connect(self._update_controls)
        self.jobs.progressed.connect(self._on_progress)
        self._connect_viewer()
        self._refresh_images()
        self.request_warm_up()

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.reordered.connect(self._on_layers_changed)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.current_step.connect(self._on_slider)
        self._click_cb = _query.ctrl_click_callback(self.similarity_panel.query_layer_for_click)
        self.viewer.mouse_drag_callbacks.append(self._click_cb)
        self._window = lambda: None  # a weak reference to the viewer's window, once known

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        """Size the dock to its content once styled (nothing cut at the right edge)."""
        super().showEvent(event)
        fit_width(self.findChild(QScrollArea))
        self._watch_window()

    def _watch_window(self) -> None:
        """Watch the viewer's window for its close (once the dock is in it: when shown
        or run). napari has no public close event for plugins, and closing the window
        sends none to its docks."""
        win = self.window()
        if win is not self and win is not self._window() and isinstance(win, QMainWindow):
            win.installEventFilter(self)
            self._window = weakref.ref(win)  # a strong one would keep a closed viewer

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        """Cancel a run and unhook the click callback when the dock closes."""
        self.shut_down()
        super().closeEvent(event)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 - Qt name
        """Shut down with the viewer's window: closing it sends no close event to the
        docks, so without this a run and the warm-up went on computing, orphaned."""
        if event.type() == QEvent.Close and obj is self._window():
            obj.event(event)  # napari decides first (it may ask, and be told no)
            if event.isAccepted():
                self.shut_down()
            return True  # handled (once) above
        return False

    def shut_down(self) -> None:
        """Cancel the run and a text refinement, stop the warm-up and unhook from the
        viewer (idempotent)."""
        self.jobs.shut_down()
        self.text_panel.stop_refinement()
        self.warm_up.quit()
        if self._click_cb in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._click_cb)
        with contextlib.suppress(TypeError, ValueError, RuntimeError):
            self.viewer.layers.selection.events.active.disconnect(self._on_active_layer)

    # -------------------------------------------------------------- images
    def _on_layers_changed(self, event: Any = None) -> None:
        for lyr in self.viewer.layers:  # follow renames (connect once per layer)
            with contextlib.suppress(TypeError, ValueError, RuntimeError):  # not connected
                lyr.events.name.disconnect(self._refresh_images)
            lyr.events.name.connect(self._refresh_images)
        live = {lyr.unique_id for lyr in self.viewer.layers}
        for key in [k for k in self.stacks if k not in live]:
            del self.stacks[key]
        self.similarity_panel.forget_removed()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        inputs = {lyr.unique_id for lyr in input_image_layers(self.viewer)}
        if not inputs and self.similarity_panel.query_layer is not None:
            QTimer.singleShot(0, self.similarity_panel.drop_orphaned)  # after napari's event
        # a newly added image is the one the user means next (as napari selects it)
        self._refresh_images(
            choose=added.unique_id if added is not None and added.unique_id in inputs else None
        )

    def _on_active_layer(self, event: Any = None) -> None:
        active = self.viewer.layers.selection.active
        if active is not None and active.unique_id in {
            lyr.unique_id for lyr in input_image_layers(self.viewer)
        }:
            self._refresh_images(choose=active.unique_id)

    def _refresh_images(self, event: Any = None, choose: Any = None) -> None:
        # the chosen layer is followed by identity, so renaming it keeps it chosen
        keep = choose if choose is not None else self.settings_panel.image_uid()
        self.settings_panel.set_image_layers(input_image_layers(self.viewer), keep)
        self._update_controls()

    def image_layer(self) -> Image | None:
        """The image layer the widget works on (None when there is none)."""
        return layer_by_uid(self.viewer, self.settings_panel.image_uid())

    def set_image(self, layer: Any) -> None:
        """Choose the image layer (by layer or name)."""
        name = layer if isinstance(layer, str) else layer.name
        idx = self.image_combo.findText(name)
        if idx < 0:
            raise ValueError(f"{name!r} is not an image layer of this viewer")
        self.image_combo.setCurrentIndex(idx)

    def current_stack(self) -> FeatureStack | None:
        """The features of the chosen image layer (its latest run), or None."""
        return self._current()[0]

    def _current(self) -> tuple[FeatureStack | None, Image | None]:
        layer = self.image_layer()
        return (None if layer is None else self.stacks.get(layer.unique_id)), layer

    def _update_controls(self, *_: Any) -> None:
        running = self.jobs.running
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.settings_panel.update_rows(self.image_layer())
        self.prerun.update_estimate()

    def channel_axis(self) -> int | None:
        """The axis chosen under Channel axis (None: no channel axis)."""
        return self.settings_panel.channel_axis()

    # ----------------------------------------------------------------- run
    def settings(self) -> dict:
        """The run settings as :func:`~napari_featup.pipeline.iter_extract` keywords
        (without the image-specific contrast limits); SettingsError when unusable."""
        return self.settings_panel.run_settings().extract_kwargs()

    def notify_error(self, message: str) -> None:
        """Show ``message`` (status line and a notification) and keep it in
        ``last_error``."""
        self.last_error = message
        self.status.setText(message.splitlines()[0])
        show_error(message)

    def run(self, planes: list[Index] | None = None, add_to_stack: bool = False) -> bool:
        """Start computing features (of the displayed plane, all planes, or ``planes``).

        Returns False, with a notification saying why, when nothing was started
        (a run in progress, no image layer, bad settings, nothing left to compute).
        """
        if self.jobs.running:
            show_info("FeatUp is already running: wait for it or press Cancel.")
            return False
        self.last_error = None
        layer = self.image_layer()
        active = self.viewer.layers.selection.active
        labels = next((lyr.name for lyr in self.viewer.layers if isinstance(lyr, Labels)), None)
        if isinstance(active, Labels):
            labels = active.name
        try:
            plan = plan_run(
                self.settings_panel.run_settings(),
                layer,
                world_point=self.viewer.dims.point,
                planes=planes,
                stack=None if layer is None else self.stacks.get(layer.unique_id),
                add_to_stack=add_to_stack,
                labels_name=labels,
            )
        except (SettingsError, ImageError) as exc:  # what the user can change; else a bug
            self.notify_error(explain(exc))
            return False
        if plan is None:
            return False
        if not self._confirmed(layer):
            self.status.setText("Not started: the estimate was declined.")
            return False

        def done(status: str, out: RunOutput | None) -> None:
            self._on_run_done(status, out, layer, plan)

        self.status.setText("starting…")
        self._watch_window()
        started = self.jobs.start(plan.request, on_done=done)
        self._update_controls()
        return started

    def _confirmed(self, layer: Image) -> bool:
        """Ask before a run beyond the available memory or longer than ten minutes
        (``ask_before_run(text) -> bool``; a message box unless replaced)."""
        try:
            est = estimate_for(self.settings_panel.run_settings(), layer)
        except Exception:  # noqa: BLE001 - an estimate must never block a run
            return True
        return not est.needs_confirmation or self.ask_before_run(confirmation_text(est))

    def ask_before_run(self, text: str) -> bool:
        """Yes/No box with ``text``; scripts and tests may replace this method."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(self, "FeatUp: large run", text)
        return answer == QMessageBox.Yes

    def cancel(self) -> None:
        """Stop the run at its next step; nothing it computed is shown."""
        if self.jobs.running:
            self.status.setText("cancelling…")
            self.jobs.cancel()

    def _on_progress(self, ev: Progress) -> None:
        self.status.setText(progress_text(ev))

    def _on_run_done(
        self, status: str, out: RunOutput | None, layer: Image, plan: PlannedRun
    ) -> None:
        try:
            if status == "cancelled":
                self.status.setText("Cancelled: the viewer is unchanged.")
                show_info("FeatUp run cancelled; no layers were changed.")
            elif status == "error":
                context = f"computing features of {layer.name!r}"
                self.notify_error(explain(out.error, context, out.stage))
            elif not is_alive(self.viewer, layer):
                status = "cancelled"
                self.status.setText(f"Layer {layer.name!r} was removed; results dropped.")
            else:
                self._show_results(out, layer, plan)
        except Exception as exc:  # noqa: BLE001 - never let a result crash the viewer
            status = "error"
            self.notify_error(explain(exc, f"showing the features of {layer.name!r}"))
        finally:
            self._update_controls()
            self.run_finished.emit(status)
        if status == "done":
            self._maybe_follow_slider()

    def _show_results(self, out: RunOutput, layer: Image, plan: PlannedRun) -> None:
        if out.large is not None:  # dask layers over a store (session.large)
            stack = LargeStack(layer.name, plan.geometry, plan.config, out.large)
        else:
            stack = plan.extends or FeatureStack(layer.name, plan.geometry, plan.config)
            stack.add_planes(out.results, out.pca, out.colours, out.basis)
        old = self.stacks.get(layer.unique_id)
        self.stacks[layer.unique_id] = stack
        remove_replaced(self.viewer, old, stack)
        if old is not stack and hasattr(old, "close"):
            old.close()  # a replaced large stack's temporary store
        for data, kwargs, ltype in stack.layer_data():
            upsert_layer(self.viewer, data, kwargs, ltype)
        stale_heatmap = (
            old is not None and old is not stack and not self.similarity_panel.has_points()
        )
        if stale_heatmap and stack.similarity_name in self.viewer.layers:  # the old run's
            self.viewer.layers.remove(stack.similarity_name)
        meta = stack.metadata
        msg = (
            f"{layer.name}: {meta['backbone']} features {meta['grid'][0]} x "
            f"{meta['grid'][1]} x {meta['dim']}, upsampled with {meta['upsampler']} "
            f"({len(stack.results)} plane(s))."
        )
        if meta.get("random_weights"):
            msg += " RANDOM WEIGHTS: these features mean nothing."
            key = json.dumps(stack.config, sort_keys=True, default=str)
            if key not in self._warned_random:  # once per run setting, not per slice
                self._warned_random.add(key)
                show_warning(msg)
        self.status.setText(msg)
        if self.similarity_panel.has_points():
            self.update_similarity()
        arrange_results(self.viewer, layer, stack, self.similarity_panel.query_layer)
        self._show_displayed_plane(stack, layer)
        if not self._shown_similarity:  # the first results: time to query them
            self._shown_similarity = True
            self.sections["Similarity"].set_expanded(True)
        self.viewer.layers.selection.active = layer

    # ------------------------------------------------- similarity and export
    def ensure_query_layer(self) -> Any:
        """The "FeatUp query" points layer (created over the image when missing)."""
        return self.similarity_panel.ensure_query_layer()

    def activate_query_layer(self) -> None:
        """Select the query layer in add mode."""
        self.similarity_panel.activate_query_layer()

    def clear_points(self) -> None:
        """Remove every query point."""
        self.similarity_panel.clear_points()

    def update_similarity(self) -> bool:
        """Refresh "<image> similarity" from the query points (see the panel)."""
        return self.similarity_panel.update_similarity()

    def make_mask(self, threshold: float | None = None) -> Any:
        """Labels layer "<image> similarity mask": similarity >= threshold."""
        return self.similarity_panel.make_mask(threshold)

    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """Export the displayed plane's features, PCA and similarity to ``path``
        (.zarr, .npz, .tif or .npy). Raises FileExistsError unless ``overwrite``."""
        return self.export_panel.export(path, overwrite=overwrite)

    def open_features(self, path: str | Path) -> list[Any]:
        """Add the layers of a feature file (``.featup.*``, a zarr folder, or a file
        written before the ``.featup`` suffix); returns them."""
        return self.export_panel.open_features(path)

    @property
    def query_layer(self) -> Any:
        """The "FeatUp query" points layer, or None before the first point."""
        return self.similarity_panel.query_layer

    # -------------------------------------------------------------- slider
    def _displayed_plane(self, stack: FeatureStack, layer: Image) -> Index:
        ca = stack.config.get("channel_axis")
        return current_plane(layer, stack.geometry, self.viewer.dims.point, ca)

    def _show_displayed_plane(self, stack: FeatureStack, layer: Image) -> bool:
        """Show the result layers when the displayed slice has features, hide them
        while it has none (transparent, not black); True when it has."""
        if not stack.geometry.leading:
            return True
        computed = self._displayed_plane(stack, layer) in stack.results
        set_results_shown(self.viewer, stack, computed, self._hidden)
        return computed

    def _on_slider(self, event: Any = None) -> None:
        stack, layer = self._current()
        if stack is None or layer is None or not stack.geometry.leading:
            return
        if self._show_displayed_plane(stack, layer):
            self.similarity_panel.refresh_plane(stack, self._displayed_plane(stack, layer))
        else:
            self._maybe_follow_slider()

    def _maybe_follow_slider(self) -> None:
        stack, layer = self._current()
        if (
            stack is None
            or layer is None
            or not stack.geometry.leading
            or not self.follow_slider.isChecked()
            or self.jobs.running
        ):
            return
        plane = self._displayed_plane(stack, layer)
        if plane not in stack.results:
            self.run(planes=[plane], add_to_stack=True)
