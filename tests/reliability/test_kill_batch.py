"""The batch extractor survives SIGKILL: a run of ``extract_many`` killed at any point
leaves in the store only whole images, each equal to an uninterrupted run's, and
running the same command again finishes the store bit for bit equal to that run.

Kill points are random (seeded) moments spread over one uninterrupted run, for a new
store and for a store whose images are all stale (inputs changed), where each image
must be the old one or the new one, never a mix. What is compared: every array of
every image (``features`` float16, ``pca_lowres`` and ``pca`` uint8) with
``np.array_equal``, and the metadata (the signature included) except the timing and
the input files' path, size and mtime. ``NAPARI_FEATUP_KILL_POINTS`` sets the points per
case (default 4).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_featup import io
from napari_featup.store import FeatureStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="fork and SIGKILL are POSIX")

POINTS = int(os.environ.get("NAPARI_FEATUP_KILL_POINTS", "4"))
NAMES = [f"img{i}" for i in range(4)]
TEMP = re.compile(io._TEMP)
TALLY = dict.fromkeys(["kills", "images_done", "mid_image", "old", "new", "absent"], 0)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nbatch kill tests: {TALLY}")


def _inputs(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(NAMES):  # small grey images of a few sizes (grids 3x4..6x6)
        shape = (48 + 8 * i, 64 + 6 * i)
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 4000, shape).astype(np.uint16))
    return folder


def _state(store: Path, name: str) -> dict:
    """Everything stored for an image, but what depends on when and where it ran."""
    im = FeatureStore(store)[name]
    assert im.intact()
    meta = dict(im.metadata)
    meta.pop("seconds")
    meta.pop("source")  # the input file's path
    meta["signature"] = {k: v for k, v in meta["signature"].items() if k != "file"}
    arrays = {k: np.asarray(im.group[k][...]) for k in sorted(im.group.array_keys())}
    assert sorted(arrays) == ["features", "pca", "pca_lowres"]
    return {"meta": meta, "arrays": arrays}


def _same(a: dict, b: dict) -> bool:
    return a["meta"] == b["meta"] and all(
        np.array_equal(a["arrays"][k], b["arrays"][k]) for k in a["arrays"]
    ) and a["arrays"].keys() == b["arrays"].keys()  # fmt: skip


def _leftovers(folder: Path, store: Path) -> tuple[list[str], list[str]]:
    """(what killed runs may leave beside the store, anything else unexpected)."""
    ok, other = [], []
    for p in folder.iterdir():
        if p.name in ("in", store.name):
            continue
        m = TEMP.fullmatch(p.name)
        known = p.name == f".{store.name}.partial" or (m and m.group("name") == store.name)
        (ok if known else other).append(p.name)
    return ok, other


@pytest.fixture(scope="module")
def references(jobs, tmp_path_factory):
    """Uninterrupted runs: the old store (inputs A), the new one (inputs B), timings."""
    root = tmp_path_factory.mktemp("batch-ref")
    out = {}
    for key, seed in (("old", 1), ("new", 2)):
        store = root / key / "f.zarr"
        seconds, summary = jobs.run(job="batch", inputs=str(_inputs(root / key / "in", seed)),
                                    store=str(store))  # fmt: skip
        assert summary == f"computed={len(NAMES)},skipped=0"
        out[key] = {n: _state(store, n) for n in NAMES}
        out[key + "_store"], out[key + "_seconds"] = store, seconds
    assert not any(_same(out["old"][n], out["new"][n]) for n in NAMES)
    # the stale case takes as long (every image recomputed), plus the digests
    out["stale_seconds"] = jobs.run(
        job="batch", inputs=str(root / "new" / "in"), store=str(_copy(out["old_store"], root))
    )[0]
    return out


def _copy(store: Path, folder: Path) -> Path:
    dest = folder / "stale" / store.name
    shutil.copytree(store, dest)
    return dest


@pytest.mark.parametrize("scenario", ["new-store", "stale-store"])
def test_kill_during_batch_then_resume(jobs, kill_delays, references, tmp_path, scenario):
    span = references["new_seconds" if scenario == "new-store" else "stale_seconds"]
    for i, delay in enumerate(kill_delays(span, POINTS, seed=len(scenario))):
        folder = tmp_path / f"kill{i}"
        inputs = _inputs(folder / "in", seed=2)
        store = folder / "f.zarr"
        if scenario == "stale-store":
            shutil.copytree(references["old_store"], store)
        pid = jobs.start(job="batch", inputs=str(inputs), store=str(store))
        time.sleep(delay)
        jobs.kill(pid)
        TALLY["kills"] += 1

        # under the final name: no store, or a store of whole images only
        present = FeatureStore(store).names() if store.exists() else []
        if store.exists():
            assert sorted(p.name for p in store.iterdir()) == sorted(["zarr.json", *present])
        assert set(present) <= set(NAMES)
        was_new = []
        for name in present:
            got = _state(store, name)
            if _same(got, references["new"][name]):
                was_new.append(name)
            else:  # an image not yet replaced: the whole old one
                assert scenario == "stale-store" and _same(got, references["old"][name]), name
        ok, other = _leftovers(folder, store)
        assert other == [], f"unrecognisable files left: {other}"
        partial = folder / f".{store.name}.partial"
        mid = partial.is_dir() and any(partial.iterdir())
        TALLY["mid_image"] += mid  # killed while an image was half-written
        TALLY["images_done"] += len(was_new)
        TALLY["new"] += len(was_new)
        TALLY["old"] += len(present) - len(was_new)
        TALLY["absent"] += len(NAMES) - len(present)

        # the same command again: completes the rest, equal to the uninterrupted run
        pid = jobs.start(job="batch", inputs=str(inputs), store=str(store))
        kind, rest = jobs.finish(pid)
        assert kind == "done", rest
        assert rest.split(" ", 1)[1] == (
            f"computed={len(NAMES) - len(was_new)},skipped={len(was_new)}"
        )
        assert FeatureStore(store).names() == NAMES
        for name in NAMES:
            assert _same(_state(store, name), references["new"][name]), name
        assert _leftovers(folder, store) == ([], [])  # the killed run's temporaries gone


def test_kills_landed_inside_batches():
    """The kill points hit runs in progress: some with images done and some not, and
    some in the middle of writing an image."""
    if TALLY["kills"] == 0:
        pytest.skip("run with the kill tests")
    assert TALLY["images_done"] > 0 and TALLY["absent"] > 0, TALLY
    assert TALLY["mid_image"] > 0, TALLY
