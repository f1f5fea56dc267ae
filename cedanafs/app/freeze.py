"""Freezing and thawing a whole process tree: `freeze`/`unfreeze` `process <PID>` and `job <JID>`.

Where the tree is alone in a cgroup v2 (nothing else in it or below it), the cgroup freezer stops
it atomically (`cgroup.freeze`), and new children cannot escape. Otherwise every process of the
tree gets SIGSTOP, parents first and then the children found again until none is new (a child
forked meanwhile is caught on the next pass); unfreeze sends SIGCONT to every one of them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field

import psutil

from ..errors import CedanaError, NotFound, PermissionDenied
from .procinfo import dumpable_process

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"  # where the cgroup v2 hierarchy usually is; cgroup2_root() finds it
_PASSES = 10
_FROZEN_TIMEOUT = 10.0


@dataclass
class FreezeResult:
    pid: int
    method: str  # "cgroup" or "signal"
    pids: list[int] = field(default_factory=list)
    cgroup: str = ""
    frozen: bool = True

    def to_dict(self) -> dict:
        return {"pid": self.pid, "method": self.method, "pids": self.pids, "cgroup": self.cgroup,
                "frozen": self.frozen}


def tree_pids(pid: int) -> list[int]:
    try:
        proc = psutil.Process(pid)
        return [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise NotFound(f"no such process: PID {pid}") from None


def freeze(pid: int) -> FreezeResult:
    """Stop PID and all its descendants."""
    dumpable_process(pid)
    group = own_cgroup(pid)
    if group:
        _set_frozen(group, True)
        return FreezeResult(pid, "cgroup", tree_pids(pid), _rel(group))
    seen: list[int] = []
    for _ in range(_PASSES):
        new = [p for p in tree_pids(pid) if p not in seen]
        if not new:
            break
        _signal(new, signal.SIGSTOP)
        seen += new
    _wait_stopped(seen)
    return FreezeResult(pid, "signal", seen)


def unfreeze(pid: int) -> FreezeResult:
    """Let PID and all its descendants run again (whichever way they were frozen)."""
    pids = tree_pids(pid)
    group = own_cgroup(pid)
    if group and _read(os.path.join(group, "cgroup.freeze")) == "1":
        _set_frozen(group, False)
    _signal(pids, signal.SIGCONT)
    return FreezeResult(pid, "cgroup" if group else "signal", pids, _rel(group) if group else "", frozen=False)


def own_cgroup(pid: int) -> str:
    """The cgroup v2 directory holding exactly PID's tree (and nothing else, nor sub-cgroups), else ''."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    rel = next((line[3:] for line in lines if line.startswith("0::")), "")
    root = cgroup2_root()
    if rel in ("", "/") or not root:
        return ""
    path = os.path.join(root, rel.lstrip("/"))
    if not os.path.exists(os.path.join(path, "cgroup.freeze")):
        return ""
    try:
        members = {int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()}
        subgroups = [e for e in os.scandir(path) if e.is_dir()]
    except (OSError, ValueError):
        return ""
    return path if not subgroups and members == set(tree_pids(pid)) else ""


def cgroup2_root() -> str:
    """The mount point of the cgroup v2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
    systems), '' without one."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return ""


def _set_frozen(group: str, frozen: bool) -> None:
    try:
        with open(os.path.join(group, "cgroup.freeze"), "w") as f:
            f.write("1" if frozen else "0")
    except PermissionError:
        raise PermissionDenied(f"not allowed to {'freeze' if frozen else 'thaw'} cgroup {_rel(group)}") from None
    deadline = time.monotonic() + _FROZEN_TIMEOUT
    want = f"frozen {int(frozen)}"
    while want not in _read(os.path.join(group, "cgroup.events")).splitlines():
        if time.monotonic() > deadline:
            raise CedanaError(f"cgroup {_rel(group)} did not become {'frozen' if frozen else 'thawed'}"
                              f" within {_FROZEN_TIMEOUT:.0f}s")
        time.sleep(0.01)


def _signal(pids: list[int], signum: int) -> None:
    for p in pids:
        try:
            os.kill(p, signum)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise PermissionDenied(f"not allowed to signal PID {p} (it belongs to another user)") from None


def _wait_stopped(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for p in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(p).status() in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _rel(group: str) -> str:
    return "/" + os.path.relpath(group, cgroup2_root() or CGROUP_ROOT)
