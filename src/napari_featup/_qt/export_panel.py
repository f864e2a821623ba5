"""The Export section: write the displayed plane's features to a file.

The file itself is written by :func:`napari_featup.session.export.export_stack_plane`;
this panel asks where (and whether to replace an existing file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QFileDialog, QMessageBox, QPushButton, QVBoxLayout, QWidget

from ..session.export import export_stack_plane
from ..session.geometry import current_plane
from ..session.messages import explain
from .viewer_layers import StackGetter

FILTERS = "Zarr (*.zarr);;NumPy archive (*.npz);;TIFF (*.tif);;NumPy array (*.npy)"


class ExportPanel(QWidget):
    """Export button and the full-resolution option."""

    def __init__(
        self,
        viewer: Any,
        current: StackGetter,
        notify_error: Callable[[str], None],
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self.viewer = viewer
        self._current = current
        self._notify_error = notify_error
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        self.export_button = QPushButton("Export features…")
        self.export_highres = QCheckBox("include full-resolution features (large)")
        box.addWidget(self.export_button)
        box.addWidget(self.export_highres)
        self.export_button.clicked.connect(self._export_dialog)

    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """Export the displayed plane's features, PCA and similarity to ``path``
        (.zarr, .npz, .tif or .npy). Raises FileExistsError unless ``overwrite``."""
        stack, layer = self._current()
        if stack is None:
            raise ValueError("nothing to export: run FeatUp on this image first")
        ca = stack.config.get("channel_axis")
        plane = current_plane(layer, stack.geometry, self.viewer.dims.point, ca)
        if plane not in stack.results:  # the displayed slice has none: the first that has
            plane = sorted(stack.results)[0]
        return export_stack_plane(
            path, stack, plane, self.export_highres.isChecked(), overwrite=overwrite
        )

    def _export_dialog(self) -> None:
        stack, layer = self._current()
        if stack is None:
            show_info("Nothing to export yet: press Run first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export FeatUp features",
            f"{layer.name}_features.zarr",
            FILTERS,
            options=QFileDialog.DontConfirmOverwrite,  # asked below, for folders too
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
        except Exception as exc:  # noqa: BLE001 - reported, never raised into Qt
            self._notify_error(explain(exc, f"exporting to {path}"))
            return
        show_info(f"Exported FeatUp features to {out}")
