"""Exports survive SIGKILL: a process killed at any point of ``save_features`` leaves
under the final name either nothing, the complete old file or the complete new one;
temporaries it leaves are hidden, carry its pid and are removed by the next write of
the same name, and re-running gives the result of an uninterrupted run.

Kill points are timing-based: delays spread over the measured length of one write
(0 to 1.2 times it), for a fresh write and for an overwrite, in every format. Set
``NAPARI_FEATUP_KILL_POINTS`` for more points per case (the default keeps the test to
a few seconds).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from napari_featup import io

from .conftest import SRC, Forker

pytestmark = pytest.mark.skipif(os.name != "posix", reason="fork and SIGKILL are POSIX")

WRITER = Path(__file__).with_name("_kill_writer.py")
POINTS = int(os.environ.get("NAPARI_FEATUP_KILL_POINTS", "4"))
EXTS = (".npz", ".zarr", ".tif", ".npy")
TEMP = re.compile(io._TEMP)
TALLY = dict.fromkeys(["kills", "mid_write", "absent", "complete_old", "complete_new"], 0)


class Writer(Forker):
    """The forking writer process (tests/reliability/_kill_writer.py)."""

    def __init__(self) -> None:
        super().__init__(WRITER, str(SRC), start_timeout=60)

    def start(self, out: Path, seed: int, overwrite: bool) -> int:
        return super().start(out=str(out), seed=seed, overwrite=overwrite)

    def finish(self, pid: int) -> tuple[str, str]:
        """('done', seconds) or ('error', message) of child ``pid``."""
        return super().finish(pid, 60)

    def write(self, out: Path, seed: int, overwrite: bool = False) -> tuple[str, str]:
        return self.finish(self.start(out, seed, overwrite))


@pytest.fixture(scope="module")
def writer():
    w = Writer()
    yield w
    w.close()
    print(f"\nkill tests: {TALLY}")


def _expected(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)  # as _kill_writer.make_result
    return (
        rng.standard_normal((64, 8, 8), dtype=np.float32),
        rng.standard_normal((64, 64, 64), dtype=np.float32),
    )


def _which(path: Path) -> int | None:
    """The seed of the complete file at ``path`` (None if absent); fails if partial."""
    if not path.exists():
        return None
    res = io.load_features(path)  # a partial or mixed file raises FeatureFileError here
    seed = int(res.metadata["seed"])
    lowres, highres = _expected(seed)
    assert np.array_equal(res.highres, highres)
    if path.suffix != ".npy":
        assert np.array_equal(res.lowres, lowres)
    return seed


def _leftovers(folder: Path, out: Path) -> tuple[list[str], list[str]]:
    """(temporaries of writes to ``out``, any other unexpected entries)."""
    temps, other = [], []
    for p in folder.iterdir():
        if p.name in (out.name, out.name + ".json"):
            continue
        m = TEMP.fullmatch(p.name)
        (temps if m and m.group("name") == out.name else other).append(p.name)
    return temps, other


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("scenario", ["fresh", "overwrite"])
def test_kill_during_export(writer, tmp_path, ext, scenario):
    # one uninterrupted write: its length sets the kill points
    kind, seconds = writer.write(tmp_path / f"reference{ext}", seed=1)
    assert kind == "done", seconds
    span = max(float(seconds), 0.002)
    for i in range(POINTS):
        folder = tmp_path / f"kill{i}"
        folder.mkdir()
        out = folder / f"f{ext}"
        if scenario == "overwrite":
            assert writer.write(out, seed=2)[0] == "done"
        pid = writer.start(out, seed=1, overwrite=scenario == "overwrite")
        time.sleep(span * 1.2 * i / max(POINTS - 1, 1))
        writer.kill(pid)
        TALLY["kills"] += 1
        # nothing partial under the final name: absent, the old file, or the new one
        seed = _which(out)
        temps, other = _leftovers(folder, out)
        assert other == [], f"unrecognisable files left: {other}"
        if scenario == "fresh":
            assert seed in (None, 1)
        else:
            # absent only during a swap (.zarr, .npy: the old one moved aside, the new
            # one not yet in place); never a .npy whose array and sidecar differ
            assert seed in ((None, 1, 2) if ext in (".zarr", ".npy") else (1, 2)), seed
            if seed is None:
                assert any(t.endswith(".old") for t in temps), temps
        TALLY["mid_write"] += bool(temps)  # its temporaries show the write had begun
        TALLY["absent"] += seed is None
        TALLY["complete_new"] += seed == 1
        TALLY["complete_old"] += seed == 2
        # the same command again finishes the job and clears the killed write's temporaries
        kind, msg = writer.write(out, seed=1, overwrite=scenario == "overwrite")
        if kind == "error":  # the killed write had finished: the file is complete already
            assert scenario == "fresh" and seed == 1 and "FileExistsError" in msg, msg
        else:
            assert kind == "done", msg
        assert _which(out) == 1
        assert _leftovers(folder, out) == ([], [])


def test_kills_landed_inside_writes():
    """The timing above hit writes in progress, not only before or after them."""
    if TALLY["kills"] == 0:
        pytest.skip("run with the kill tests")
    assert TALLY["mid_write"] > 0, TALLY
