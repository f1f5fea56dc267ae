"""Peer credentials: a non-root caller sees and acts on its own jobs and processes only.

The client drops its effective uid/gid to nobody after importing, as any non-root process would
appear on the socket (SO_PEERCRED reports the effective ids).
"""

from __future__ import annotations

import json
import sys

import psutil
import pytest

from tests.fixtures_daemon import ALIVE, NOBODY, wait_status
from tests.fixtures_procs import PROGRAMS, pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]

DENIED = 77


def nobody(daemon, *args):
    return daemon.cedana(*args, as_nobody=True)


def assert_denied(result) -> None:
    assert result.returncode == DENIED, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "another user" in lines[0], result.stderr


def test_nobody_cannot_list_dump_kill_or_restore_roots_jobs(daemon):
    out = daemon.root / "r.count"
    daemon.cedana("run", "process", "--jid", "rootjob", "-o", daemon.root / "r.log", "--", sys.executable,
                  PROGRAMS / "counter.py", out, check=True)
    wait_for(lambda: len(read_lines(out)) >= 3, what="the counter to count")
    pid = daemon.job("rootjob")["pid"]

    listed = nobody(daemon, "job", "list", "--output", "json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    for args in (("dump", "job", "rootjob"), ("job", "kill", "rootjob"), ("job", "checkpoints", "rootjob"),
                 ("job", "inspect", "rootjob"), ("job", "delete", "rootjob", "--yes")):
        assert_denied(nobody(daemon, *args))
    assert pid_alive(pid) and daemon.job("rootjob")["status"] in ALIVE
    assert daemon.checkpoints("rootjob") == []

    daemon.cedana("dump", "job", "rootjob", check=True)
    wait_status(daemon, "rootjob", ("halted",))
    assert_denied(nobody(daemon, "restore", "job", "rootjob"))
    assert daemon.job("rootjob")["status"] == "halted"
    ckpt = daemon.checkpoints("rootjob")[0]["path"]
    assert_denied(nobody(daemon, "restore", "process", "--path", ckpt))
    assert nobody(daemon, "daemon", "check").returncode == 0


def test_nobody_cannot_dump_or_manage_roots_processes(daemon, procs):
    out = daemon.root / "p.count"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="the counter to count")
    drop = daemon.root / "drop"
    drop.mkdir(mode=0o777)
    drop.chmod(0o777)
    result = nobody(daemon, "dump", "process", proc.pid, "--dir", drop)
    assert result.returncode == DENIED and "another user" in result.stderr, result.stderr
    assert_denied(nobody(daemon, "manage", "process", proc.pid, "--jid", "theft"))
    assert pid_alive(proc.pid) and list(drop.iterdir()) == []


def test_nobody_runs_and_sees_only_its_own_jobs(daemon):
    logs = daemon.root / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    daemon.cedana("run", "process", "--jid", "mine-root", "-o", daemon.root / "x.log", "--", "sleep", "600",
                  check=True)
    ran = nobody(daemon, "run", "process", "--jid", "mine-nobody", "-o", logs / "n.log", "--", "sleep", "600")
    assert ran.returncode == 0, ran.stderr
    job = wait_status(daemon, "mine-nobody", ALIVE)
    assert psutil.Process(job["pid"]).uids().real == NOBODY
    seen = json.loads(nobody(daemon, "job", "list", "--output", "json").stdout)
    assert [j["job"] for j in seen] == ["mine-nobody"]
    assert set(daemon.jobs()) == {"mine-root", "mine-nobody"}
    assert nobody(daemon, "job", "kill", "mine-nobody").returncode == 0
    wait_status(daemon, "mine-nobody", ("halted",))
    assert_denied(nobody(daemon, "job", "kill", "mine-root"))
