"""Fixtures for tests that start real processes and run the real `cedana` command.

Everything started here (and every pid a test registers, such as a restored process) is
killed at teardown, even when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = Path(__file__).resolve().parent / "programs"
WORKLOAD = ROOT / "bench" / "workload.py"
CEDANA = [sys.executable, "-m", "cedanafs.cli"]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_lines(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (FileNotFoundError, ValueError):
        return []


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Procs:
    """Starts processes in their own session and remembers every pid to kill at the end."""

    def __init__(self):
        self.popens: list[subprocess.Popen] = []
        self.pids: set[int] = set()

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, **kwargs)
        self.popens.append(proc)
        self.pids.add(proc.pid)
        return proc

    def counter(self, out: Path, **kwargs) -> subprocess.Popen:
        extra = kwargs.pop("args", [])
        return self.start([sys.executable, str(PROGRAMS / "counter.py"), str(out), *extra], **kwargs)

    def workload(self, state: Path, size: str = "64M", **kwargs) -> tuple[subprocess.Popen, dict]:
        proc = self.start([sys.executable, str(WORKLOAD), "--size", size, "--state", str(state)], **kwargs)
        info = wait_for(lambda: _json(state), timeout=120, what="workload to fill its memory")
        return proc, info

    def watch(self, pid: int) -> None:
        self.pids.add(pid)

    def cleanup(self) -> None:
        for pid in list(self.pids):
            try:
                for child in psutil.Process(pid).children(recursive=True):
                    child.kill()
                os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass
        for proc in self.popens:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def checksum_after_signal(pid: int, state: Path, timeout: float = 60) -> dict:
    """Ask a workload to recompute its memory checksum and return its fresh state."""
    before = state.stat().st_mtime_ns if state.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: state.exists() and state.stat().st_mtime_ns != before, timeout=timeout,
             what="workload checksum")
    return json.loads(state.read_text())


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def cedana(tmp_path):
    """Run the real `cedana` command; returns CompletedProcess (text), never raises on failure."""

    def run(*args: str, timeout: float = 120, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        result = subprocess.run([*CEDANA, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                                cwd=str(ROOT), **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"cedana {' '.join(map(str, args))} failed ({result.returncode}):"
                                 f" {result.stderr.strip()}")
        return result

    return run


def spool_emptied(root: Path, timeout: float = 20) -> None:
    """Wait until a spool root holds nothing: spool dirs are removed in the background once used."""
    wait_for(lambda: not root.exists() or os.listdir(root) == [], timeout=timeout,
             what=f"the spool {root} to be emptied")
