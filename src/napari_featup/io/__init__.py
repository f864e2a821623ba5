"""Feature files other tools read: .npz, .zarr, .tif and .npy, with metadata.

* ``.npz``: one array per name plus ``metadata`` (a JSON string); ``np.load`` reads it.
* ``.zarr``: a group with one array per name and the metadata in the group's
  attributes under ``"napari_featup"``; zarr, dask and napari read it.
* ``.tif``/``.tiff``: one series per array (channel-first), the names and metadata as
  JSON in the first page's ImageDescription; tifffile and Fiji read it.
* ``.npy``: a single array, the metadata beside it in ``<file>.json``.

Writes go to a temporary name in the same folder and are renamed into place, so a
failed or interrupted write never leaves a half file under the final name, and an
existing file is only replaced with ``overwrite=True``. A killed write cannot clean
up: its temporaries (hidden, named after the target and the writer's pid) are removed
by the next write of the same name. A ``.npy`` is two files: an old one is moved aside
before the new pair is renamed in, and its sidecar records the array's shape, dtype and
CRC-32, so a pair from two different writes is refused rather than read.

Readers check what they read: damaged, mislabelled or foreign files and metadata that
does not describe the arrays raise :class:`FeatureFileError` saying what is wrong.
"""

from __future__ import annotations

from ..errors import FeatureFileError
from ._format import FEATUP_SUFFIX, FORMATS, META_KEY, featup_path
from .read import (
    check_planes,
    feature_arrays,
    load_arrays,
    load_feature_stack,
    load_features,
    read_metadata,
)
from .write import _TEMP, clean_stale_temporaries, save_arrays, save_features

__all__ = [
    "FEATUP_SUFFIX",
    "FORMATS",
    "META_KEY",
    "FeatureFileError",
    "_TEMP",
    "check_planes",
    "clean_stale_temporaries",
    "feature_arrays",
    "featup_path",
    "load_arrays",
    "load_feature_stack",
    "load_features",
    "read_metadata",
    "save_arrays",
    "save_features",
]
