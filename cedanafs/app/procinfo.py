"""What we learn about a live process before dumping it: is it dumpable, and its state record.

The state record (process_state.json in every checkpoint) lets restore and `inspect` say what
was dumped without parsing CRIU's images: pid, cmdline, cwd, uids, open files, children, host.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field

import psutil

from ..errors import NotFound, UsageError

PF_KTHREAD = 0x00200000


@dataclass
class ProcessState:
    """The process as it was when dumped, recorded in process_state.json."""

    pid: int
    ppid: int
    sid: int
    cmdline: list[str]
    cwd: str
    uids: list[int]
    gids: list[int]
    start_time: float
    status: str
    host: str
    open_files: list[dict] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    stdio: dict[str, str] = field(default_factory=dict)
    shell_job: bool = False
    tcp_established: bool = False
    dumped_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _is_kernel_thread(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    # Field 9 of /proc/PID/stat is flags; after the comm, it is the 7th entry.
    return pid == 2 or int(fields[6]) & PF_KTHREAD != 0


def dumpable_process(pid: int) -> psutil.Process:
    """The process, or a clear error saying why it cannot be checkpointed."""
    if pid <= 0:
        raise UsageError(f"invalid PID {pid}")
    if pid == 1:
        raise UsageError("PID 1 (init) cannot be checkpointed")
    if pid == os.getpid():
        raise UsageError("cedana cannot checkpoint itself")
    try:
        proc = psutil.Process(pid)
        proc.status()
    except psutil.NoSuchProcess:
        raise NotFound(f"no such process: PID {pid}") from None
    if _is_kernel_thread(pid):
        raise UsageError(f"PID {pid} is a kernel thread and cannot be checkpointed")
    if proc.status() == psutil.STATUS_ZOMBIE:
        raise UsageError(f"PID {pid} is a zombie (it has exited) and cannot be checkpointed")
    return proc


def has_controlling_tty(pid: int) -> bool:
    """Whether the process has a controlling terminal (tty_nr, field 7 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[4]) != 0
    except (OSError, IndexError, ValueError):
        return False


def is_shell_job(pid: int, sid: int) -> bool:
    """CRIU's --shell-job: the session (or its terminal) is outside the dumped tree.

    Either the process does not lead its session, or it leads one with a controlling terminal
    (an interactive shell): CRIU cannot restore the terminal, so it must take the caller's.
    """
    return sid != pid or has_controlling_tty(pid)


def _stdio(pid: int) -> dict[str, str]:
    out = {}
    for fd in (0, 1, 2):
        try:
            out[str(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return [proc]


def has_established_tcp(proc: psutil.Process) -> bool:
    """Whether any process of the tree holds an established TCP connection (CRIU then needs a flag)."""
    for p in _tree(proc):
        try:
            conns = p.net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        if any(c.status == psutil.CONN_ESTABLISHED for c in conns):
            return True
    return False


def process_state(proc: psutil.Process) -> ProcessState:
    with proc.oneshot():
        files = []
        try:
            files = [{"path": f.path, "fd": f.fd, "position": f.position, "mode": f.mode}
                     for f in proc.open_files()]
        except psutil.Error:
            pass
        sid = os.getsid(proc.pid)
        return ProcessState(
            pid=proc.pid, ppid=proc.ppid(), sid=sid, cmdline=proc.cmdline(), cwd=proc.cwd(),
            uids=list(proc.uids()), gids=list(proc.gids()), start_time=proc.create_time(),
            status=proc.status(), host=socket.gethostname(), open_files=files,
            children=[c.pid for c in _tree(proc)[1:]], stdio=_stdio(proc.pid),
            shell_job=is_shell_job(proc.pid, sid), tcp_established=has_established_tcp(proc), dumped_at=time.time(),
        )
