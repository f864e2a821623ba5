"""napari dock widgets (the only part of napari-featup that imports Qt)."""

from ._compat import guard_triton

guard_triton()  # before anything imports torch._dynamo (see _compat)

from ._dock import FeatUpWidget  # noqa: E402

__all__ = ["FeatUpWidget"]
