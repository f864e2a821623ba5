"""FeatUp's JBU stack (``featup-jbu``) in pure PyTorch: exact, tiled, fast on CPU and GPU.

Modules, bottom up (each imports only those before it):

* ``reference.py`` -- FeatUp's steps in plain torch ops: the baseline and the check;
* ``layer.py`` -- :class:`JBULayer`, one 2x layer (FeatUp's parameters and kernels);
* ``kernels.py`` -- :class:`JBUKernels`: the layers' kernels folded with the bicubic
  upsample and applied in bands as batched matrix products;
* ``checkpoints.py`` -- :data:`FEATUP_CHECKPOINTS`, the one table of FeatUp's published
  stacks, their URLs, cache paths, download, and reading a checkpoint file;
* ``stack.py`` -- :class:`FeatUpJBU`, the registered upsampler, and
  :func:`load_featup_checkpoint`.
"""

from __future__ import annotations

from ...ops import reflect_index
from .checkpoints import (
    FEATUP_CHECKPOINTS,
    default_use_norm,
    download_featup_checkpoint,
    featup_checkpoint_path,
    featup_checkpoint_url,
    read_featup_state,
)
from .kernels import JBUKernels, _bicubic_taps, _pool_axis  # noqa: F401 (tests use these)
from .layer import DIAMETER, KEY_DIM, RADIUS, TAPS, JBULayer
from .reference import reference_forward, reference_layer
from .stack import FeatUpJBU, FeatUpJBUOptions, load_featup_checkpoint

__all__ = [
    "DIAMETER",
    "FEATUP_CHECKPOINTS",
    "KEY_DIM",
    "RADIUS",
    "TAPS",
    "FeatUpJBU",
    "FeatUpJBUOptions",
    "JBUKernels",
    "JBULayer",
    "default_use_norm",
    "download_featup_checkpoint",
    "featup_checkpoint_path",
    "featup_checkpoint_url",
    "load_featup_checkpoint",
    "read_featup_state",
    "reference_forward",
    "reference_layer",
    "reflect_index",
]
