"""Processes, mounts and commands the benchmark starts, and how it always gets rid of them.

Everything the harness creates (workloads, restored processes, tmpfs, FUSE mounts, its work
directory) is registered with a `Cleanup` right after it exists, so an error or Ctrl-C at any
point still leaves the machine as it was.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
WORKLOAD_SCRIPT = BENCH_DIR / "workload.py"
PR_SET_CHILD_SUBREAPER = 36


class StepError(Exception):
    """A step of a measurement failed (a command exited non-zero, a process did not appear...)."""


class Cleanup:
    """A LIFO list of undo actions; each runs at most once, errors are reported and skipped."""

    def __init__(self, log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)):
        self._actions: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0
        self._log = log

    def add(self, what: str, action: Callable[[], None]) -> int:
        self._next += 1
        self._actions[self._next] = (what, action)
        return self._next

    def run(self, token: int) -> None:
        """Run one action now (and forget it)."""
        entry = self._actions.pop(token, None)
        if entry is not None:
            self._safely(*entry)

    def run_all(self) -> None:
        for token in sorted(self._actions, reverse=True):
            self.run(token)

    def _safely(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - cleanup goes on whatever one action did
            self._log(f"cleanup: {what}: {type(err).__name__}: {err}")


def become_subreaper() -> None:
    """Adopt orphaned descendants, so processes restored detached by CRIU can be reaped by us.

    Otherwise a killed restored process could stay a zombie under an init that does not reap,
    holding its PID, and the next restore of the same checkpoint would fail.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def pid_state(pid: int) -> str | None:
    """The one-letter state of a process ('R', 'S', 'Z'...), or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_running(pid: int) -> bool:
    return pid_state(pid) not in (None, "Z", "X")


def kill_and_reap(pid: int, timeout: float = 15.0) -> None:
    """SIGKILL a process and make sure its PID is free again (reaping it if it is ours)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if pid_state(pid) is None:
                return
        time.sleep(0.02)
    raise StepError(f"process {pid} did not go away after SIGKILL")


def wait_gone(pid: int, timeout: float) -> None:
    """Wait for a process to exit by itself (reaping it if it is, or became, our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if pid_state(pid) in (None, "Z"):
                return
        time.sleep(0.01)
    raise StepError(f"process {pid} still running after {timeout:.0f}s")


def kill_restored(pid: int) -> None:
    """Kill a restored workload, but only if that PID really is one (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if WORKLOAD_SCRIPT.name.encode() in cmdline:
        kill_and_reap(pid)
    elif pid_state(pid) == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def reap_orphans() -> None:
    """Reap any adopted children that have exited (only when no Popen of ours is still waiting)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# --- memory of the processes a command starts ---

def read_hwm(pid: int) -> tuple[str, int] | None:
    """(process name, peak resident set size in bytes) from /proc/PID/status, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    hwm = fields.get("VmHWM")
    if hwm is None:  # a zombie or a kernel thread
        return None
    return fields["Name"].strip(), int(hwm.split()[0]) * 1024


def process_label(pid: int, name: str) -> str:
    """'cedanafs' for the Python processes of the cedana command, else the process name."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmdline = ""
    if name == "cedana" or ("cedana" in cmdline and "python" in name):
        return "cedanafs"
    return name


class MemoryWatch:
    """Polls the peak RSS (VmHWM, a high-water mark kept by the kernel) of the given processes.

    Because VmHWM only grows, a poll at any time after a spike sees it; only a spike in the last
    poll interval before a process exits can be missed. Only the given processes are polled, not
    their children (CRIU is not cedanafs): a scan of /proc for children costs ~20 ms of CPU on a
    busy machine, which at this poll rate would slow down the very commands being measured.
    """

    def __init__(self, roots: list[int], interval: float = 0.02):
        self.roots = list(roots)
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._labels: dict[int, str] = {}

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> dict[str, int]:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        return self.peak

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.interval):
                return

    def poll(self) -> None:
        for pid in self.roots:
            got = read_hwm(pid)
            if got is None:
                continue
            label = self._labels.setdefault(pid, process_label(pid, got[0]))
            self.peak[label] = max(self.peak.get(label, 0), got[1])


# --- running commands ---

@dataclass
class CmdResult:
    seconds: float
    stdout: str
    stderr: str
    peak_rss: dict[str, int] = field(default_factory=dict)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_cmd(cmd: list[str], *, timeout: float, env: dict | None = None, watch_memory: bool = False,
            cwd: str | None = None) -> CmdResult:
    """Run a command to completion, timed; raise StepError (with its last stderr line) on failure."""
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    except OSError as err:
        raise StepError(f"{cmd[0]}: {err}") from err
    watch = MemoryWatch([proc.pid]) if watch_memory else None
    if watch:
        watch.__enter__()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise StepError(f"{shlex.join(cmd)} took longer than {timeout:.0f}s") from None
    except BaseException:  # Ctrl-C or SIGTERM: the command must not outlive the run
        proc.kill()
        proc.wait()
        raise
    finally:
        peak = watch.stop() if watch else {}
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise StepError(f"`{shlex.join(cmd)}` exited {proc.returncode}: {last_line(err) or last_line(out)}")
    return CmdResult(seconds, out, err, peak)


def command_works(cmd: list[str], timeout: float = 60.0) -> tuple[bool, str]:
    """Whether a command (e.g. `cedana dump process --help`) runs and exits 0, with its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    return proc.returncode == 0, proc.stdout + proc.stderr


# --- mounts ---

def mount_tmpfs(path: Path, cleanup: Cleanup) -> int:
    """Mount a fresh tmpfs at path; returns the cleanup token that unmounts it."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", str(path)], check=True,
                   capture_output=True)
    return cleanup.add(f"unmount tmpfs {path}", lambda: unmount(path))


def unmount(path: Path) -> None:
    """Unmount path if mounted: politely first, lazily if it is busy."""
    if not os.path.ismount(path):
        return
    for cmd in (["umount", str(path)], ["fusermount3", "-u", str(path)], ["umount", "-l", str(path)]):
        if subprocess.run(cmd, capture_output=True).returncode == 0 and not os.path.ismount(path):
            return
    raise StepError(f"could not unmount {path}")


# --- the workload ---

class HeartbeatWatch:
    """Notes the first moment the heartbeat file's mtime changes: a restored workload runs again.

    Start it before the restore, with the original workload dead: then nothing else touches the
    file. The workload touches it every 50 ms, so this sees the restart up to one tick late.
    """

    def __init__(self, path: Path, interval: float = 0.002):
        self.path, self.interval = path, interval
        self.first: float | None = None
        self._baseline = self._mtime()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _mtime(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._mtime() != self._baseline:
                self.first = time.perf_counter()
                return
            time.sleep(self.interval)

    def wait(self, timeout: float) -> float | None:
        """perf_counter() of the first beat, waiting up to timeout for it; None if none came."""
        self._thread.join(timeout)
        self.stop()
        return self.first

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()



class Workload:
    """bench/workload.py as a session leader (so CRIU needs no --shell-job), stdio on /dev/null.

    /dev/null, not a log file, because CRIU refuses to restore a regular file whose size changed.
    """

    def __init__(self, size: str, mix: str, state_path: Path, change: str = "256K"):
        self.size, self.mix, self.change_bytes = size, mix, change
        self.state_path = state_path
        self.heartbeat_path = state_path.with_name("heartbeat")
        self.gaps_path = state_path.with_name("gaps.json")
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def start(self, cleanup: Cleanup, timeout: float) -> dict:
        self.state_path.unlink(missing_ok=True)
        self.heartbeat_path.touch()
        cmd = [sys.executable, str(WORKLOAD_SCRIPT), "--size", self.size, "--mix", self.mix,
               "--state", str(self.state_path), "--change", self.change_bytes,
               "--heartbeat", str(self.heartbeat_path), "--gaps", str(self.gaps_path)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
        self.pid = self.proc.pid
        cleanup.add(f"kill workload {self.pid}", self.stop)
        return self.wait_state(since=0.0, timeout=timeout, proc=self.proc)

    def stop(self) -> None:
        """Kill the original workload (restored copies have the same PID but are not self.proc)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_state(self, since: float, timeout: float, proc: subprocess.Popen | None = None,
                   pid: int | None = None) -> dict:
        """The first state the workload wrote at or after `since` (a time.time() value)."""
        pid = pid or self.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.read_state()
            if state and state.get("pid") == pid and state.get("time", 0) >= since:
                return state
            if (proc is not None and proc.poll() is not None) or (proc is None and not is_running(pid)):
                raise StepError(f"workload {pid} exited before writing its state")
            time.sleep(0.02)
        raise StepError(f"workload {pid} wrote no state within {timeout:.0f}s")

    def longest_gap(self, timeout: float = 30.0) -> float | None:
        """The longest the workload went without a tick since the last call (None: not running).

        Seen from its own clock: a dump that freezes it shows as a gap, whatever the dump command
        does before or after."""
        if not is_running(self.pid):
            return None
        since = time.time()
        os.kill(self.pid, signal.SIGWINCH)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                gaps = json.loads(self.gaps_path.read_text())
                if gaps["time"] >= since:
                    return float(gaps["max_gap"])
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        return None

    def checksum_now(self, pid: int, timeout: float) -> tuple[dict, float]:
        """Ask a (possibly restored) workload to checksum its memory; returns (state, seconds)."""
        since = time.time()
        start = time.perf_counter()
        os.kill(pid, signal.SIGUSR1)
        state = self.wait_state(since=since, timeout=timeout, pid=pid)
        return state, time.perf_counter() - start

    def change(self, timeout: float) -> dict:
        """Let the job move on a little (SIGUSR2 rewrites --change bytes); returns the new state."""
        since = time.time()
        os.kill(self.pid, signal.SIGUSR2)
        return self.wait_state(since=since, timeout=timeout, proc=self.proc)
