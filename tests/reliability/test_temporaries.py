"""Temporaries of killed writes are recognised and removed by the next write, and only
those of writers that have ended."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_featup import io

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pid liveness is checked on POSIX")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("ext", [".npz", ".zarr", ".tif", ".npy"])
def test_next_write_removes_temporaries_of_ended_writers(tmp_path, ext):
    out = tmp_path / f"f{ext}"
    dead, alive = _dead_pid(), os.getppid()
    stale = [
        tmp_path / f".{out.name}.{dead}-0123abcd.tmp{ext}",
        tmp_path / f".{out.name}.{dead}-0123abcd.tmp{ext}.json",
        tmp_path / f".{out.name}.{dead}-89abcdef.old",
    ]
    keep = [
        tmp_path / f".{out.name}.{alive}-0123abcd.tmp{ext}",  # a live writer's
        tmp_path / f".other{ext}.{dead}-0123abcd.tmp{ext}",  # another target's
        tmp_path / f".{out.name}.notes",  # not a temporary name
    ]
    for p in stale + keep:
        p.mkdir() if p.suffix in (".zarr", ".old") else p.write_bytes(b"partial")
    io.save_arrays(out, {"lowres": np.ones((2, 3, 4), np.float32)})
    assert all(not p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert io.load_arrays(out)[0]["lowres"].shape == (2, 3, 4)


def test_orphan_sidecar_does_not_block_a_new_npy(tmp_path):
    # a write killed after renaming the sidecar but before the array leaves this
    out = tmp_path / "f.npy"
    (tmp_path / "f.npy.json").write_text('{"arrays": ["lowres"]}')
    io.save_arrays(out, {"lowres": np.ones((2, 3, 4), np.float32)})
    assert io.load_arrays(out)[1]["arrays"] == ["lowres"]


def test_npy_pair_from_different_writes_is_refused(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    io.save_arrays(a, {"highres": np.zeros((2, 3, 4), np.float32)})
    io.save_arrays(b, {"highres": np.ones((2, 3, 4), np.float32)})
    os.replace(tmp_path / "b.npy.json", tmp_path / "a.npy.json")  # same shape, other data
    with pytest.raises(io.FeatureFileError, match="different writes"):
        io.load_features(a)
