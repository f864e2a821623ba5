"""The kill tests' job process (``_kill_jobs.py``), shared by the batch and training
kill tests: start a job in a forked child, SIGKILL it, wait for a job to finish."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
JOBS = Path(__file__).with_name("_kill_jobs.py")


class Forker:
    """A warm process that forks one child per job (see ``_kill_jobs.py``)."""

    def __init__(self, script: Path, *args: str, start_timeout: float = 120) -> None:
        env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(script), *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self._buf = b""
        self.killed: set[int] = set()
        assert self._line(start_timeout) == "up"

    def _line(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError("the job process did not answer")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise EOFError("the job process ended")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _message(self, pid: int | None, kinds: tuple[str, ...], timeout: float) -> tuple:
        """The next ``(kind, pid, rest)`` of child ``pid`` (any if None) of a kind in
        ``kinds``; late lines of killed children are skipped."""
        while True:
            kind, who, rest = (self._line(timeout) + "  ").split(" ", 2)
            if kind in kinds and (pid is None or int(who) == pid):
                return kind, int(who), rest.strip()
            assert int(who) in self.killed, f"unexpected line: {kind} {who} {rest}"

    def start(self, **request) -> int:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return self._message(None, ("ready",), 30)[1]

    def finish(self, pid: int, timeout: float = 120) -> tuple[str, str]:
        """``('done', 'SECONDS SUMMARY')`` or ``('error', message)`` of child ``pid``."""
        kind, _, rest = self._message(pid, ("done", "error"), timeout)
        return kind, rest

    def run(self, **request) -> tuple[float, str]:
        """Run a job to the end; (seconds, summary). Fails on an error."""
        kind, rest = self.finish(self.start(**request))
        assert kind == "done", rest
        seconds, _, summary = rest.partition(" ")
        return float(seconds), summary

    def kill(self, pid: int) -> None:
        """SIGKILL child ``pid`` and wait until it is gone (reaped by the job process)."""
        self.killed.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return  # it had finished (and was reaped) before the kill point
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.001)
        raise TimeoutError(f"child {pid} survived SIGKILL")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def _kill_delays(span: float, points: int, seed: int) -> list[float]:
    """``points`` delays over 0 to 1.1 x ``span``: one per equal slice, at a seeded
    random place inside it (random points, the same ones every run)."""
    rng = np.random.default_rng(seed)
    width = 1.1 * span / points
    return [width * (i + rng.uniform()) for i in range(points)]


@pytest.fixture(scope="session")
def jobs():
    """The warm job process (models loaded once for all kill tests)."""
    if os.name != "posix":
        pytest.skip("fork and SIGKILL are POSIX")
    f = Forker(JOBS)
    yield f
    f.close()


@pytest.fixture(scope="session")
def kill_delays():
    """``kill_delays(span, points, seed)``: seeded random kill moments over a run."""
    return _kill_delays
