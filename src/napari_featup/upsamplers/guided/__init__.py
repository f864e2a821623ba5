"""Training-free guided upsamplers: a shared kernel engine and two upsamplers on it.

``jbu-classic`` fixes the kernel widths; ``guided-fit`` fits them to each image.
"""

# listing order: jbu-classic, then guided-fit
from . import jbu_classic  # noqa: F401  isort: skip
from . import guided_fit  # noqa: F401  isort: skip

__all__ = ["guided_fit", "jbu_classic"]
