"""Writer process for the kill tests (run as a script, not collected by pytest).

It imports the writer once and forks one child per request; each child saves a feature
file with :func:`napari_featup.io.save_features` and the test SIGKILLs it at a chosen
moment. Forking from a warm process makes a write start in milliseconds, so many kill
points fit in a few seconds.

Protocol, one line each way: the test sends ``{"out": PATH, "overwrite": BOOL, "seed":
INT}``; children answer ``ready PID`` just before the write, then ``done PID SECONDS``
or ``error PID MESSAGE``.

usage: python _kill_writer.py SRC_DIR
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import types
from pathlib import Path

# napari_featup/__init__ imports torch and every backbone (seconds); the writer needs
# only io.py and errors.py, so the package is stood in for by a bare namespace.
_pkg = types.ModuleType("napari_featup")
_pkg.__path__ = [str(Path(sys.argv[1]) / "napari_featup")]
sys.modules["napari_featup"] = _pkg

import numpy as np  # noqa: E402
import tifffile  # noqa: E402, F401  (imported before forking: children start at once)
import zarr  # noqa: E402, F401  (zarr resets its event loop in forked children itself)

from napari_featup import io  # noqa: E402


def make_result(seed: int) -> types.SimpleNamespace:
    """What save_features reads from a FeatureResult, with seed-determined values."""
    rng = np.random.default_rng(seed)
    return types.SimpleNamespace(
        lowres=rng.standard_normal((64, 8, 8), dtype=np.float32),
        highres=rng.standard_normal((64, 64, 64), dtype=np.float32),  # 1 MB
        metadata={"napari_featup_version": "0.1.0", "seed": seed, "stride": 16},
        pca=None,
    )


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # unbuffered: parent and children share stdout


def _child(request: dict) -> None:
    result = make_result(int(request["seed"]))
    _say(f"ready {os.getpid()}")
    t0 = time.perf_counter()
    try:
        io.save_features(request["out"], result, overwrite=bool(request["overwrite"]))
    except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
        _say(f"error {os.getpid()} {type(exc).__name__}: {exc}".replace("\n", " "))
        os._exit(1)
    _say(f"done {os.getpid()} {time.perf_counter() - t0:.6f}")
    os._exit(0)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    _say("up")
    for line in sys.stdin:
        request = json.loads(line)
        if os.fork() == 0:
            _child(request)


if __name__ == "__main__":
    main()
