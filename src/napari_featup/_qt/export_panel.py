"""The Export section: write the computed features to a file, open feature files.

The file itself is written by :func:`napari_featup.session.export.export_stack_plane`;
this panel asks where (and whether to replace an existing file). Files get FeatUp's
suffix (``x.featup.npz``), which napari opens with this plugin; "Open features…" opens
the others too (zarr folders, files named before the suffix existed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QFileDialog, QMessageBox, QPushButton, QVBoxLayout, QWidget

from .._reader_associations import associate_feature_files
from ..io import featup_path
from ..session.export import export_stack, feature_file_from_choice
from ..session.messages import explain
from .viewer_layers import StackGetter

FILTERS = (
    "FeatUp NumPy archive (*.featup.npz);;FeatUp TIFF (*.featup.tif);;"
    "FeatUp Zarr folder (*.featup.zarr);;FeatUp NumPy array (*.featup.npy)"
)
OPEN_FILTER = "Feature files (*.npz *.tif *.tiff *.npy zarr.json .zattrs .zgroup);;All files (*)"


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
        self.open_button = QPushButton("Open features…")
        self.open_button.setToolTip(
            "Open a feature file as its PCA and similarity layers: .featup.* files "
            "(which File > Open also opens), zarr folders (pick the zarr.json inside) "
            "and files written before the .featup suffix"
        )
        box.addWidget(self.export_button)
        box.addWidget(self.export_highres)
        box.addWidget(self.open_button)
        self.export_button.clicked.connect(self._export_dialog)
        self.open_button.clicked.connect(self._open_dialog)

    def export(self, path: str | Path, overwrite: bool = False) -> Path:
        """Export the features, PCA and similarity of every computed slice to ``path``
        (.npz, .tif, .zarr or .npy; one file, the slice index of each entry in its
        metadata). Raises FileExistsError unless ``overwrite``."""
        stack, _ = self._current()
        if stack is None:
            raise ValueError("nothing to export: run FeatUp on this image first")
        return export_stack(path, stack, self.export_highres.isChecked(), overwrite=overwrite)

    def _export_dialog(self) -> None:
        stack, layer = self._current()
        if stack is None:
            show_info("Nothing to export yet: press Run first.")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export FeatUp features",
            f"{layer.name}.featup.npz",
            FILTERS,
            options=QFileDialog.DontConfirmOverwrite,  # asked below, for folders too
        )
        if not path:
            return
        path = str(featup_path(path))  # so napari opens it with FeatUp later
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

    def open_features(self, path: str | Path) -> list[Any]:
        """Add the layers of feature file ``path`` (any name, zarr folders too)."""
        from .._reader import read_features

        associate_feature_files()
        return [
            getattr(self.viewer, f"add_{ltype}")(data, **kwargs)
            for data, kwargs, ltype in read_features(str(feature_file_from_choice(path)))
        ]

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open FeatUp features", "", OPEN_FILTER)
        if not path:
            return
        try:
            self.open_features(path)
        except Exception as exc:  # noqa: BLE001 - reported, never raised into Qt
            self._notify_error(explain(exc, f"opening {path}"))
