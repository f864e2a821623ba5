"""JBU training survives SIGKILL: a ``train_jbu`` run killed at any point leaves under
its final name either nothing or the complete trained checkpoint, beside it either no
resume checkpoint or a complete one (a whole number of steps, its loss curve a prefix of
the uninterrupted run's), and resuming from it finishes bit for bit equal to the
uninterrupted run. Temporaries of the killed save are removed by the next save.

What is compared: every tensor of ``state_dict`` (upsampler, downsampler, uncertainty
net) and of the optimiser state with ``torch.equal``, the resume state (step, RNG
state), ``global_step``, ``epoch`` and the loss curve; not the timing metadata. Kill
points are random (seeded) moments over one uninterrupted run (a checkpoint after
every step, so kills land in saves too); ``NAPARI_FEATUP_KILL_POINTS`` sets how many
(default 4).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch

import napari_featup as nf
from napari_featup import io
from napari_featup.upsamplers.featup_jbu import train_checkpoint as ckpt

POINTS = int(os.environ.get("NAPARI_FEATUP_KILL_POINTS", "4"))
STEPS = 5  # _kill_jobs.TRAIN_STEPS
TEMP = re.compile(io._TEMP)
TALLY = dict.fromkeys(["kills", "finished", "resumable", "nothing", "temporaries"], 0)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\ntraining kill tests: {TALLY}")


def _content(path: Path) -> dict:
    """What a checkpoint holds that must not depend on interruptions."""
    obj = ckpt.read_checkpoint(path)  # weights_only: a torn file raises here
    meta = obj[ckpt.META_KEY]
    rs = {k: v for k, v in obj[ckpt.RESUME_KEY].items() if k not in ("seconds", "cpu_seconds")}
    return {
        "state_dict": obj["state_dict"],
        "optimizer": obj["optimizer_states"],
        "resume": rs,
        "step": (obj["global_step"], obj["epoch"], meta["steps"]),
        "loss_curve": meta["loss_curve"],
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _temporaries(folder: Path, out: Path) -> list[str]:
    """Names in ``folder`` besides the checkpoint and its resume file; fails on any
    that is not a temporary of a save of one of them."""
    names = []
    for p in folder.iterdir():
        if p.name in (out.name, out.name + ".partial"):
            continue
        m = TEMP.fullmatch(p.name)
        assert m and m.group("name") in (out.name, out.name + ".partial"), p.name
        names.append(p.name)
    return names


@pytest.fixture(scope="module")
def reference(jobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-ref") / "jbu.ckpt"
    seconds, summary = jobs.run(job="train", out=str(out))
    assert summary == f"steps={STEPS}"
    return {"final": _content(out), "seconds": seconds}


def test_kill_during_training_then_resume(jobs, kill_delays, reference, tmp_path):
    ref = reference["final"]
    for i, delay in enumerate(kill_delays(reference["seconds"], POINTS, seed=3)):
        folder = tmp_path / f"kill{i}"
        folder.mkdir()
        out = folder / "jbu.ckpt"
        partial = Path(str(out) + ".partial")
        pid = jobs.start(job="train", out=str(out))
        time.sleep(delay)
        jobs.kill(pid)
        TALLY["kills"] += 1
        TALLY["temporaries"] += bool(_temporaries(folder, out))

        if out.exists():  # the final name holds the whole trained checkpoint or nothing
            assert _equal(_content(out), ref)
            nf.load_featup_checkpoint(out)  # and it is a usable upsampler file
            TALLY["finished"] += 1
            continue
        resume = None
        if partial.exists():  # a complete checkpoint of a whole number of steps
            got = _content(partial)
            k = got["step"][0]
            assert 0 <= k <= STEPS and got["resume"]["step"] == k == got["step"][2]
            assert got["loss_curve"] == ref["loss_curve"][:k]
            resume = str(partial)
            TALLY["resumable"] += 1
        else:
            TALLY["nothing"] += 1

        # run again (from the resume checkpoint when there is one): the uninterrupted result
        seconds, summary = jobs.run(job="train", out=str(out), resume=resume)
        assert summary == f"steps={STEPS}"
        assert _equal(_content(out), ref)
        assert _temporaries(folder, out) == []  # the killed save's temporaries removed


def test_kills_landed_inside_training():
    """The kill points hit runs in progress: some resumable mid-run."""
    if TALLY["kills"] == 0:
        pytest.skip("run with the kill tests")
    assert TALLY["resumable"] > 0, TALLY
