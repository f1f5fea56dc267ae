"""`query process`: what cedanafs would checkpoint for a PID, before doing it.

For each process of the tree: its command, state, open files, sockets; for the whole: whether the
dump needs `--shell-job` (not a session leader, or a terminal on its stdio), `--tcp-established`
(an established TCP connection) or `--file-locks` (a lock in /proc/locks held by the tree), and a
predicted size: the anonymous memory of every process (from /proc/PID/smaps_rollup, else smaps),
which is what CRIU's pages-*.img hold, plus a little for the other images.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import psutil

from .procinfo import dumpable_process

IMAGE_OVERHEAD = 64 << 10  # core, mm, fdinfo, ... images of one process, roughly


@dataclass
class ProcessInfo:
    pid: int
    ppid: int
    sid: int
    cmdline: list[str]
    status: str
    uid: int
    files: list[dict] = field(default_factory=list)
    sockets: list[dict] = field(default_factory=list)
    tty: str = ""
    anon_bytes: int = 0


@dataclass
class QueryResult:
    pid: int
    processes: list[ProcessInfo]
    shell_job: bool
    tcp_established: bool
    file_locks: bool
    predicted_size: int
    flags: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def query_process(pid: int, tree: bool = True) -> QueryResult:
    """What a dump of PID (and its children) would take."""
    root = dumpable_process(pid)
    procs = [root] + (_children(root) if tree else [])
    infos = [_info(p) for p in procs]
    shell_job = infos[0].sid != pid or any(i.tty for i in infos)
    tcp = any(s["type"] == "tcp" and s["status"] == psutil.CONN_ESTABLISHED for i in infos for s in i.sockets)
    locks = _holds_locks({i.pid for i in infos})
    flags = [f for f, on in (("--shell-job", shell_job), ("--tcp-established", tcp), ("--file-locks", locks)) if on]
    size = sum(i.anon_bytes + IMAGE_OVERHEAD for i in infos)
    return QueryResult(pid, infos, shell_job, tcp, locks, size, flags)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _info(proc: psutil.Process) -> ProcessInfo:
    with proc.oneshot():
        info = ProcessInfo(pid=proc.pid, ppid=proc.ppid(), sid=os.getsid(proc.pid), cmdline=proc.cmdline(),
                           status=proc.status(), uid=proc.uids().real)
    info.files = _files(proc.pid)
    info.sockets = _sockets(proc)
    info.tty = next((f["path"] for f in info.files if f["fd"] in (0, 1, 2) and _is_tty(f["path"])), "")
    info.anon_bytes = anonymous_bytes(proc.pid)
    return info


def _files(pid: int) -> list[dict]:
    out = []
    try:
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                pos = int(f.readline().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.append({"fd": fd, "path": target, "pos": pos})
    return out


def _sockets(proc: psutil.Process) -> list[dict]:
    try:
        conns = proc.net_connections(kind="all")
    except (psutil.Error, OSError):
        return []
    kinds = {1: "tcp", 2: "udp", 5: "seqpacket"}
    out = []
    for c in conns:
        kind = "unix" if c.family == 1 else kinds.get(int(c.type), str(c.type))
        out.append({"fd": c.fd, "type": kind, "local": _addr(c.laddr), "remote": _addr(c.raddr),
                    "status": c.status})
    return out


def _addr(addr) -> str:
    if not addr:
        return ""
    return addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"


def _is_tty(path: str) -> bool:
    return path.startswith("/dev/pts/") or path.startswith("/dev/tty")


def anonymous_bytes(pid: int) -> int:
    """Resident anonymous memory of PID: what CRIU will write as pages."""
    for name in ("smaps_rollup", "smaps"):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("Anonymous:")) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return 0


def _holds_locks(pids: set[int]) -> bool:
    """Whether a process of the tree holds a POSIX/flock/OFD lock (CRIU then needs --file-locks)."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        try:
            if int(parts[4]) in pids:
                return True
        except (IndexError, ValueError):
            continue
    return False
