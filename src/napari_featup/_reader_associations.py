"""Tell napari to open FeatUp's own files (``*.featup.npz`` ...) with this plugin.

napari's built-in reader also claims ``*.npz``, ``*.tif`` and ``*.npy``, and npe2 has
no notion of a more specific pattern winning, so a ``.featup.npz`` would otherwise
bring up the "Choose reader" dialog. napari resolves that conflict with its reader
preferences (Preferences > Plugins > File extension readers); this module adds FeatUp's
patterns there, and only those, never replacing a choice the user made.
"""

from __future__ import annotations

import contextlib

PLUGIN = "napari-featup"
#: the suffixes FeatUp writes (zarr folders are not matched by name in napari)
FEATUP_PATTERNS = ("*.featup.npz", "*.featup.tif", "*.featup.tiff", "*.featup.npy")


def associate_feature_files() -> bool:
    """Make napari open ``FEATUP_PATTERNS`` with this plugin unless the user chose
    another reader for them; True when a preference was added."""
    try:
        from napari.settings import get_settings
    except ImportError:  # the library without napari
        return False
    with contextlib.suppress(Exception):  # settings must never break a plugin call
        plugins = get_settings().plugins
        prefs = dict(plugins.extension2reader)
        missing = {p: PLUGIN for p in FEATUP_PATTERNS if p not in prefs}
        if missing:
            plugins.extension2reader = {**prefs, **missing}
            return True
    return False
