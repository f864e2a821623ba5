"""Keep torch from crashing a napari session that renders with Mesa's llvmpipe.

torch imports ``triton`` (from ``torch._dynamo``, which timm loads) when it is
installed. triton bundles its own LLVM; loading it into a process that already holds
the system's ``libLLVM`` (Mesa's software OpenGL renderer, used under Xvfb, VNC and
many remote desktops) crashes the process with a segmentation fault. The widget is
imported, and backbones are built, after napari has created its OpenGL context, so in
exactly that situation (system libLLVM mapped, triton not imported yet) we make
``import triton`` fail cleanly: torch then treats triton as absent (only
``torch.compile`` on a GPU needs it; napari-featup does not use it). No Qt needed.
"""

from __future__ import annotations

import sys
import warnings


def _system_llvm_loaded() -> bool:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any("libLLVM" in line for line in f)
    except OSError:  # not Linux: no known clash
        return False


def guard_triton() -> bool:
    """Block ``import triton`` if it would crash this process; True if blocked."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if not _system_llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment] - makes `import triton` raise ImportError
    warnings.warn(
        "napari-featup: the OpenGL renderer uses the system LLVM (software rendering); "
        "triton (torch.compile's GPU compiler) is disabled in this session because "
        "loading it next to that LLVM crashes the process.",
        RuntimeWarning,
        stacklevel=2,
    )
    return True
