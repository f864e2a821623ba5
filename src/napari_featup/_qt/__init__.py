"""napari dock widgets (the only part of napari-featup that imports Qt)."""

from .._triton_guard import guard_triton

guard_triton()  # before anything imports torch._dynamo (see _triton_guard)

from .dock import FeatUpWidget  # noqa: E402

__all__ = ["FeatUpWidget"]
