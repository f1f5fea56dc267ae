"""`cedana dump containerd` / `restore containerd` / `manage containerd` against a private
containerd with an image built locally: the restored container runs under containerd (listed by
`ctr task ls`), its counter going on from where it stopped and the files it wrote in its writable
layer still there; each bad input in one line with the container running or the checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures_containerd import IMAGE
from tests.fixtures_containers import COUNTER, read_count
from tests.fixtures_procs import wait_for
from tests.test_runc import cedana, digest, ok, one_line_error

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

SCRIPT = f"echo written-before > /data/before; {COUNTER}"


def count(pid: int) -> int:
    """The container's counter (/data/count), read through its root; 0 when there is none."""
    return read_count(Path(f"/proc/{pid}/root/data/count"))


def start(containerd_env, cid: str) -> int:
    containerd_env.ctr("run", "-d", IMAGE, cid, "sh", "-c", SCRIPT)
    pid = containerd_env.tasks()[cid]["pid"]
    wait_for(lambda: count(pid) > 5, what=f"{cid} to count")
    return pid


def where(containerd_env) -> list[str]:
    return ["--address", str(containerd_env.address), "--namespace", containerd_env.namespace]


def assert_resumed(containerd_env, cid: str, frozen: int) -> None:
    """Running under containerd, counting on from `frozen` (a fresh start would count from 1)."""
    task = containerd_env.tasks()[cid]
    assert task["status"] == "RUNNING"
    first = count(task["pid"])
    assert first >= frozen, (first, frozen)
    wait_for(lambda: count(task["pid"]) > frozen + 2, what=f"{cid} to count on")
    assert Path(f"/proc/{task['pid']}/root/data/before").read_text().strip() == "written-before"


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_dump_and_restore_containerd(containerd_env, tmp_path, compression):
    pid = start(containerd_env, "c1")
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

    out = ok("restore", "containerd", "--path", ckpt, "--id", "c2", *where(containerd_env))
    assert "Restored containerd container c2" in out
    assert_resumed(containerd_env, "c2", frozen)
    assert digest(ckpt) == before


def test_leave_running_and_manage_as_job(containerd_env, daemon, tmp_path):
    pid = start(containerd_env, "svc")
    out = daemon.cedana("manage", "containerd", "svc", *where(containerd_env), "--jid", "svcjob", check=True).stdout
    assert "as job svcjob" in out
    job = daemon.job("svcjob")
    assert job["type"] == "containerd" and job["pid"] == containerd_env.tasks()["svc"]["pid"]

    frozen = count(pid)
    path = daemon.cedana("dump", "job", "svcjob", check=True).stdout.strip().rsplit(" ", 1)[-1]
    assert os.path.dirname(path) == str(daemon.mount_dir / "jobs" / "svcjob")
    assert "svc" not in containerd_env.tasks()
    daemon.cedana("restore", "job", "svcjob", check=True)
    task = containerd_env.tasks()["svc"]
    assert task["status"] == "RUNNING" and daemon.job("svcjob")["pid"] == task["pid"]
    assert_resumed(containerd_env, "svc", frozen)
    assert daemon.job("svcjob")["type"] == "containerd"

    # --leave-running: the original runs on, and the checkpoint restores beside it under another id.
    frozen = count(task["pid"])
    ok("dump", "containerd", "svc", *where(containerd_env), "--dir", tmp_path, "--name", "k2", "--leave-running")
    assert containerd_env.tasks()["svc"]["status"] == "RUNNING"
    ok("restore", "containerd", "--path", tmp_path / "k2", "--id", "svc2", *where(containerd_env))
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
    ok("dump", "containerd", "c1", *where(containerd_env), "--dir", tmp_path, "--name", "k1", "--leave-running")
    ckpt = tmp_path / "k1"
    before = digest(ckpt)
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c1", *where(containerd_env)), 4,
                   "already exists")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", "--image", "docker.io/no/such:1",
                          *where(containerd_env)), 3, "no/such")
    one_line_error(cedana("restore", "containerd", "--path", ckpt, "--id", "c3", "--address", tmp_path / "nosock"),
                   8, "not reachable")
    assert digest(ckpt) == before
    assert containerd_env.tasks()["c1"]["status"] == "RUNNING"
    assert "c3" not in containerd_env.containers()


def test_containerd_checkpoint_through_a_bucket(containerd_env, s3_url):
    pid = start(containerd_env, "c1")
    frozen = count(pid)
    out = ok("dump", "containerd", "c1", *where(containerd_env), "--dir", s3_url, "--name", "kb",
             "--compression", "lz4")
    assert f"{s3_url}/kb.tar.lz4" in out
    ok("restore", "containerd", "--path", f"{s3_url}/kb.tar.lz4", "--id", "c9", *where(containerd_env))
    assert_resumed(containerd_env, "c9", frozen)
