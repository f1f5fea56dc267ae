"""`cedana dump containerd` / `restore containerd` / `manage containerd` against a private
containerd with an image built locally: the restored container runs under containerd (listed by
`ctr task ls`), its counter going on from where it stopped, in its memory and in the output it
prints into the log, the files it wrote in its writable layer still there, a TCP client keeping
its connection (--tcp-established); each bad input in one line with the container running or the
checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_containerd import IMAGE
from tests.fixtures_containers import COUNTER, read_count
from tests.fixtures_procs import wait_for
from tests.test_runc import assert_continues, cedana, digest, log_numbers, ok, one_line_error
from tests.test_runc_jobs import _connect, _echo, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

SCRIPT = f"echo written-before > /data/before; {COUNTER}"
# Holds a process traced (PTRACE_SEIZE: it runs on) until killed; CRIU cannot seize a traced task.
TRACER = """import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(0x4206, int(sys.argv[1]), 0, 0) != 0:
    sys.exit(f"ptrace: errno {ctypes.get_errno()}")
print("seized", flush=True)
time.sleep(300)
"""


def count(pid: int) -> int:
    """The container's counter (/data/count), read through its root; 0 when there is none."""
    return read_count(Path(f"/proc/{pid}/root/data/count"))


def start(containerd_env, cid: str, log: Path | None = None) -> int:
    """A counter container; its output in `log` (ctr run --log-uri) when given."""
    log_uri = ["--log-uri", f"file://{log}"] if log else []
    containerd_env.ctr("run", "-d", *log_uri, IMAGE, cid, "sh", "-c", SCRIPT)
    pid = containerd_env.tasks()[cid]["pid"]
    wait_for(lambda: count(pid) > 5, what=f"{cid} to count")
    return pid


def where(containerd_env) -> list[str]:
    return ["--address", str(containerd_env.address), "--namespace", containerd_env.namespace]


def assert_resumed(containerd_env, cid: str, frozen: int, before_log: Path | None = None,
                   after_log: Path | None = None) -> None:
    """Running under containerd, counting on from `frozen` (a fresh start would count from 1); what
    it prints after the restore (into after_log) carries on from what it printed before (before_log)."""
    task = containerd_env.tasks()[cid]
    assert task["status"] == "RUNNING"
    first = count(task["pid"])
    assert first >= frozen, (first, frozen)
    wait_for(lambda: count(task["pid"]) > frozen + 2, what=f"{cid} to count on")
    assert Path(f"/proc/{task['pid']}/root/data/before").read_text().strip() == "written-before"
    if after_log is not None:
        after = wait_for(lambda: (n := log_numbers(after_log)) and len(n) > 3 and n, what="the restored output")
        assert_continues(log_numbers(before_log), after)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_dump_and_restore_containerd(containerd_env, tmp_path, compression):
    pid = start(containerd_env, "c1", tmp_path / "before.log")
    frozen = count(pid)  # the checkpoint holds this value or a later one; a fresh start counts from 1
    out = ok("dump", "containerd", "c1", *where(containerd_env), "--dir", tmp_path, "--name", "k1",
             "--compression", compression)
    ckpt = tmp_path / ("k1" if compression == "none" else "k1.tar.gz")
    assert str(ckpt) in out
    assert "c1" not in containerd_env.tasks()  # the task ended with the dump
    if compression == "none":
        names = {p.name for p in ckpt.iterdir()}
        assert {"containerd-checkpoint.tar", "inventory.img", "container.json", "process_state.json"} <= names
    before = digest(ckpt)

    out = ok("restore", "containerd", "--path", ckpt, "--id", "c2", *where(containerd_env), "--out",
             tmp_path / "after.log")
    assert "Restored containerd container c2" in out
    assert_resumed(containerd_env, "c2", frozen, tmp_path / "before.log", tmp_path / "after.log")
    assert digest(ckpt) == before


def test_leave_running_and_manage_as_job(containerd_env, daemon, tmp_path):
    pid = start(containerd_env, "svc", tmp_path / "before.log")
    out = daemon.cedana("manage", "containerd", "svc", *where(containerd_env), "--jid", "svcjob",
                        "-o", tmp_path / "job.log", check=True).stdout
    assert "as job svcjob" in out
    one_line_error(daemon.cedana("manage", "containerd", "ghost", *where(containerd_env)), 3, "ghost")
    one_line_error(daemon.cedana("manage", "containerd", "svc", "--address", tmp_path / "nosock"), 8,
                   "not reachable")
    job = daemon.job("svcjob")
    assert job["type"] == "containerd" and job["pid"] == containerd_env.tasks()["svc"]["pid"]

    frozen = count(pid)
    path = daemon.cedana("dump", "job", "svcjob", check=True).stdout.strip().rsplit(" ", 1)[-1]
    assert os.path.dirname(path) == str(daemon.mount_dir / "jobs" / "svcjob")
    assert "svc" not in containerd_env.tasks()
    one_line_error(daemon.cedana("restore", "job", "svcjob", "--lazy"), 2, "not supported for containerd")
    daemon.cedana("restore", "job", "svcjob", check=True)
    task = containerd_env.tasks()["svc"]
    assert task["status"] == "RUNNING" and daemon.job("svcjob")["pid"] == task["pid"]
    assert_resumed(containerd_env, "svc", frozen, tmp_path / "before.log", tmp_path / "job.log")
    assert daemon.job("svcjob")["type"] == "containerd"

    # --leave-running into the mount (through the spool): the original runs on, and the checkpoint
    # restores from the mount beside it under another id.
    frozen = count(task["pid"])
    result = daemon.json("dump", "containerd", "svc", *where(containerd_env), "--dir",
                         daemon.mount_dir / "jobs" / "copies", "--leave-running")
    assert result["via"] == "spool", result
    assert containerd_env.tasks()["svc"]["status"] == "RUNNING"
    daemon.cedana("restore", "containerd", "--path", result["path"], "--id", "svc2", *where(containerd_env),
                  "--out", tmp_path / "svc2.log", check=True)
    assert_resumed(containerd_env, "svc2", frozen)


def test_containerd_bad_inputs_are_one_line(containerd_env, tmp_path):
    one_line_error(cedana("dump", "containerd", "c1", "--address", tmp_path / "nosock", "--dir", tmp_path), 8,
                   "not reachable")
    one_line_error(cedana("dump", "containerd", "ghost", *where(containerd_env), "--dir", tmp_path), 3, "ghost")
    containerd_env.ctr("container", "create", IMAGE, "idle", "sleep", "1000")
    one_line_error(cedana("dump", "containerd", "idle", *where(containerd_env), "--dir", tmp_path), 2,
                   "not running")
    assert list(tmp_path.iterdir()) == []

    start(containerd_env, "c1")
    # CRIU fails (its task is traced by another process): one line, the task runs on, nothing written.
    tracer = subprocess.Popen([sys.executable, "-c", TRACER, str(containerd_env.tasks()["c1"]["pid"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "seized"
        one_line_error(cedana("dump", "containerd", "c1", *where(containerd_env), "--dir", tmp_path, "--name", "k0"),
                       6, "runc checkpoint of c1 failed")
    finally:
        tracer.kill()
        tracer.wait()
    assert containerd_env.tasks()["c1"]["status"] == "RUNNING"
    assert list(tmp_path.iterdir()) == []

    ok("dump", "containerd", "c1", *where(containerd_env), "--dir", tmp_path, "--name", "k1", "--leave-running")
    ckpt = tmp_path / "k1"
    before = digest(ckpt)
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c1", *where(containerd_env)), 4,
                   "already exists")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", "--image", "docker.io/no/such:1",
                          *where(containerd_env)), 3, "no/such")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", "--address", tmp_path / "nosock"),
                   8, "not reachable")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", "--lazy", *where(containerd_env)),
                   2, "--lazy is not supported for containerd")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", *where(containerd_env),
                          "--out", tmp_path / "no" / "such.log"), 2, "cannot write the container's output")
    assert digest(ckpt) == before
    # CRIU cannot restore it (its process tree is gone): one line, no container or image left behind.
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "pstree.img").unlink()
    images = containerd_env.ctr("image", "ls", "-q").stdout.split()
    one_line_error(cedana("restore", "containerd", "--path", broken, "--id", "c3", *where(containerd_env),
                          "--out", tmp_path / "c3.log"), 6, "ctr containers restore failed")
    assert not (tmp_path / "c3.log").exists()
    assert containerd_env.ctr("image", "ls", "-q").stdout.split() == images
    assert containerd_env.tasks()["c1"]["status"] == "RUNNING"
    assert "c3" not in containerd_env.containers()


def test_containerd_checkpoint_through_a_bucket(containerd_env, s3_url, tmp_path):
    pid = start(containerd_env, "c1")
    frozen = count(pid)
    out = ok("dump", "containerd", "c1", *where(containerd_env), "--dir", s3_url, "--name", "kb",
             "--compression", "lz4")
    assert f"{s3_url}/kb.tar.lz4" in out
    ok("restore", "containerd", "--path", f"{s3_url}/kb.tar.lz4", "--id", "c9", *where(containerd_env), "--out",
       tmp_path / "c9.log")
    assert_resumed(containerd_env, "c9", frozen)


def test_tcp_client_keeps_its_connection(containerd_env, tmp_path):
    """--tcp-established: a client outside keeps its connection to the server in the container (on the
    host's network: see docs/containers.md) across dump and restore under containerd."""
    port = _free_port()
    containerd_env.ctr("run", "-d", "--net-host", IMAGE, "echo", "sh", "-c", f"exec nc -l -p {port} -e cat")
    conn = wait_for(lambda: _connect(port), what="the container's TCP server")
    with conn:
        assert _echo(conn, b"before\n") == b"before\n"
        ok("dump", "containerd", "echo", *where(containerd_env), "--dir", tmp_path, "--name", "k1",
           "--tcp-established")
        assert "echo" not in containerd_env.tasks()
        ok("restore", "containerd", "--path", tmp_path / "k1", "--id", "echo2", *where(containerd_env),
           "--out", tmp_path / "after.log")
        assert containerd_env.tasks()["echo2"]["status"] == "RUNNING"
        assert _echo(conn, b"after\n") == b"after\n"
