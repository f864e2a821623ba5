"""Recently trained JBU checkpoints, shared by the plugin's widgets (Qt-free).

The "Train JBU" widget adds each checkpoint it writes; the FeatUp widget offers them as
upsampler weights. Kept for the napari session (a module-level list, newest first);
listeners hear of every change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RecentCheckpoint:
    """A trained checkpoint: its path, the backbone it is for and a one-line label."""

    path: str
    backbone: str
    label: str


_RECENT: list[RecentCheckpoint] = []
_LISTENERS: list[Callable[[], None]] = []
#: entries kept
LIMIT = 10


def add_recent_checkpoint(path: str | Path, backbone: str, label: str = "") -> None:
    """Put ``path`` first in the list (moving it up if already there) and notify."""
    p = str(Path(path).resolve())
    _RECENT[:] = [r for r in _RECENT if r.path != p]
    _RECENT.insert(0, RecentCheckpoint(p, str(backbone), label or Path(p).name))
    del _RECENT[LIMIT:]
    for cb in list(_LISTENERS):
        cb()


def recent_checkpoints() -> list[RecentCheckpoint]:
    """The checkpoints, newest first."""
    return list(_RECENT)


def on_recent_changed(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` after each change; returns a function that unsubscribes."""
    _LISTENERS.append(callback)

    def unsubscribe() -> None:
        if callback in _LISTENERS:
            _LISTENERS.remove(callback)

    return unsubscribe


def clear_recent_checkpoints() -> None:
    """Forget every entry (tests)."""
    _RECENT.clear()
    for cb in list(_LISTENERS):
        cb()


__all__ = [
    "RecentCheckpoint",
    "add_recent_checkpoint",
    "clear_recent_checkpoints",
    "on_recent_changed",
    "recent_checkpoints",
]
