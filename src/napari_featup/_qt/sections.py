"""A collapsible section (a title button over its content) and the dock's scroll area.

The dock stacks Run, Similarity, Export and Advanced sections in a vertical scroll area,
so the widget fits napari's default window (1280 x 800) with nothing squeezed: a
section that does not fit scrolls, its labels keep their full height.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)


class Section(QWidget):
    """``content`` under a title that folds it away; ``toggled(expanded)``."""

    toggled = Signal(bool)

    def __init__(self, title: str, content: QWidget, expanded: bool = True, parent=None):
        super().__init__(parent)
        self.content = content
        self.button = QToolButton()
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.button.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.button.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(self.button)
        box.addWidget(content)
        self.button.toggled.connect(self.set_expanded)
        self.button.setChecked(expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        """Whether the content shows."""
        return self.button.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        """Show (True) or fold away (False) the content."""
        if self.button.isChecked() != expanded:
            self.button.setChecked(expanded)  # comes back here through `toggled`
            return
        self.button.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.content.setVisible(expanded)
        self.toggled.emit(expanded)


def scroll_area(content: QWidget) -> QScrollArea:
    """A frameless vertical scroll area around ``content`` (never scrolls sideways:
    the content takes the dock's width)."""
    area = QScrollArea()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    return area


def dock_sections(dock: QWidget, sections: dict[str, tuple[list, bool]]) -> dict[str, Section]:
    """Lay ``dock`` out as titled :class:`Section`s in a :func:`scroll_area`.

    ``sections``: title -> (rows, expanded); a row is a widget, or a tuple of widgets
    side by side (buttons). Returns the sections by title.
    """
    out: dict[str, Section] = {}
    content = QWidget()
    column = QVBoxLayout(content)
    column.setContentsMargins(4, 4, 4, 4)
    for title, (rows, expanded) in sections.items():
        body = QWidget()
        box = QVBoxLayout(body)
        box.setContentsMargins(0, 0, 0, 0)
        for row in rows:
            if isinstance(row, tuple):
                line = QHBoxLayout()
                for w in row:
                    line.addWidget(w)
                box.addLayout(line)
            else:
                box.addWidget(row)
        out[title] = Section(title, body, expanded=expanded)
        column.addWidget(out[title])
    column.addStretch(1)
    outer = QVBoxLayout(dock)
    outer.setContentsMargins(0, 0, 0, 0)
    area = scroll_area(content)
    outer.addWidget(area)
    for section in out.values():  # a section opened later may need more width
        section.toggled.connect(lambda *_: fit_width(area))
    return out


def fit_width(area: QScrollArea, chars: int = 12) -> int:
    """Keep ``area``'s content from being cut at the right edge: combo boxes elide at
    ``chars`` characters (their lists show the whole text), and the area is at least
    as wide as the widest section needs, folded or not. Returns that width."""
    content = area.widget()
    for combo in content.findChildren(QComboBox):
        if combo.sizeAdjustPolicy() != QComboBox.AdjustToMinimumContentsLengthWithIcon:
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(chars)
    need = max(
        (s.content.minimumSizeHint().width() for s in content.findChildren(Section)), default=0
    )
    margins = content.layout().contentsMargins()
    width = need + margins.left() + margins.right() + area.verticalScrollBar().sizeHint().width()
    area.setMinimumWidth(width)
    return width
