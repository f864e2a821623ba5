"""The plugin's session model, without Qt or napari: what the dock widget shows and runs.

- :mod:`.request`: the run settings (:class:`RunSettings`) and :func:`plan_run`, which
  checks them against an image layer and builds the worker's :class:`RunRequest`.
- :mod:`.run`: :func:`iter_run`, the generator a ``thread_worker`` runs.
- :mod:`.geometry`, :mod:`.stack`, :mod:`.layer_data`: planes of a layer, the
  :class:`FeatureStack` of computed planes, layer names and placement.
- :mod:`.planes`: :class:`PlaneStore`, a stack-shaped array stored per computed plane.
- :mod:`.export`: the Export button's file; :mod:`.messages`: errors as advice.
"""

from .export import export_stack, export_stack_plane
from .geometry import Index, PlaneGeometry, current_plane, image_geometry
from .layer_data import grid_transform, pca_name, result_layer_data
from .messages import explain, is_out_of_memory
from .planes import PlaneStore
from .request import PlannedRun, RunSettings, parse_channels, plan_run
from .run import RunOutput, RunRequest, iter_run
from .stack import FeatureStack, similarity_map

__all__ = [
    "FeatureStack",
    "Index",
    "PlaneGeometry",
    "PlaneStore",
    "PlannedRun",
    "RunOutput",
    "RunRequest",
    "RunSettings",
    "current_plane",
    "explain",
    "export_stack",
    "export_stack_plane",
    "grid_transform",
    "image_geometry",
    "is_out_of_memory",
    "iter_run",
    "parse_channels",
    "pca_name",
    "plan_run",
    "result_layer_data",
    "similarity_map",
]
