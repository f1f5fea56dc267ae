"""CRIU processes left behind by a caller that died: found by what they hold open, and stopped."""

from __future__ import annotations

import logging
import os

import psutil

log = logging.getLogger(__name__)


def stop_orphan_criu(images_dir: str, timeout: float = 10.0) -> list[int]:
    """Kill every CRIU still writing into `images_dir` (its caller died); returns their pids."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "criu" and holds(proc.pid, images_dir):
            found.append(proc)
    for proc in found:
        log.warning("stopping orphaned CRIU pid %d writing into %s", proc.pid, images_dir)
        proc.kill()
    psutil.wait_procs(found, timeout=timeout)
    return [p.pid for p in found]


def holds(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` or anything under it open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == path or target.startswith(path.rstrip("/") + "/"):
            return True
    return False
