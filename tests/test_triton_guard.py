"""The triton guard: blocks `import triton` only when the system LLVM is mapped."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys, warnings
{load}
from napari_featup._triton_guard import guard_triton
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    blocked = guard_triton()
try:
    import triton  # noqa: F401
    imported = True
except ImportError:
    imported = False
print(blocked, imported, len(w))
"""


def _run(load: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(load=load)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_guard_blocks_triton_next_to_system_llvm():
    lib = ctypes.util.find_library("LLVM-15") or ctypes.util.find_library("LLVM")
    if lib is None:
        pytest.skip("no system libLLVM to load")
    blocked, imported, warned = _run(f"ctypes.CDLL({lib!r})")
    assert (blocked, imported, warned) == ("True", "False", "1")


def test_guard_leaves_triton_alone_otherwise():
    blocked, imported, warned = _run("")
    assert blocked == "False" and warned == "0"
