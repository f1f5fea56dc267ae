"""A job moves between machines through a bucket: two daemons over one s3:// (or gs://) store.

Each daemon has its own socket, mount point, catalog database, chunk cache and host name
(config `host`), so on one machine they stand in for two. Real daemons, mounts, CRIU and moto's
server (fake-gcs-server for gs://); the workload's memory checksum proves the memory came back.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures_daemon import ALIVE, DaemonHarness, wait_status
from tests.fixtures_procs import WORKLOAD, _json, checksum_after_signal, pid_alive, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(420)]

SIZE = "64M"


class Machines:
    """Daemons over one store URL, each a 'host' of its own; all stopped and cleaned up at the end."""

    def __init__(self, url: str):
        self.url = url
        self.daemons: list[DaemonHarness] = []
        # Machines that share an encrypted bucket share its key (`cedana store key export|import`).
        self.key_dir = Path(tempfile.mkdtemp(prefix="cedana-remote-key-", dir="/tmp"))
        self.key_file = self.key_dir / "store.key"

    def start(self, host: str, **env: str) -> DaemonHarness:
        root = Path(tempfile.mkdtemp(prefix=f"cedana-remote-{host}-", dir="/tmp"))
        root.chmod(0o755)
        daemon = DaemonHarness(root)
        daemon.env.update({"CEDANA_STORE_URL": self.url, "CEDANA_HOST": host,
                           "CEDANA_STORE_KEY_FILE": str(self.key_file), **env})
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def cleanup(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.cleanup()
        shutil.rmtree(self.key_dir, ignore_errors=True)


@pytest.fixture
def machines_s3(s3_url):
    m = Machines(s3_url)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def machines_gcs(gcs_url):
    m = Machines(gcs_url)
    try:
        yield m
    finally:
        m.cleanup()


def run_workload(daemon: DaemonHarness, jid: str, state: Path, size: str = SIZE) -> dict:
    daemon.cedana("run", "process", "--jid", jid, "-o", daemon.root / f"{jid}.log", "--", sys.executable,
                  WORKLOAD, "--size", size, "--state", state, check=True)
    return wait_for(lambda: _json(state), timeout=120, what="the workload to fill its memory")


def restored_checksum(daemon: DaemonHarness, jid: str, state: Path) -> tuple[int, str]:
    job = wait_status(daemon, jid, ALIVE)
    return job["pid"], checksum_after_signal(job["pid"], state, timeout=120)["checksum"]


def test_job_moves_to_a_second_machine_lazily_and_back_eagerly(machines_s3, procs):
    a = machines_s3.start("host-a")
    b = machines_s3.start("host-b")
    state = a.root / "w.json"
    info = run_workload(a, "w", state)
    pid = info["pid"]
    procs.watch(pid)

    a.cedana("dump", "job", "w", "--streams", "3", check=True)  # committed once every chunk is in the bucket
    wait_for(lambda: not pid_alive(pid), what="the dumped job to stop")
    [ckpt] = a.checkpoints("w")
    assert ckpt["host"] == "host-a"

    # The second machine sees the job as another host's, with the same checkpoint.
    job_b = wait_for(lambda: b.jobs().get("w"), what="the second daemon to list the job")
    assert job_b["status"] == "remote" and job_b["checkpoint"] == ckpt["id"] and job_b["host"] == "host-a"
    assert "w" not in {j["job"] for j in b.json("job", "list")}  # other hosts' jobs only with --all
    assert [r["id"] for r in b.checkpoints("w")] == [ckpt["id"]]
    # The mount's own view follows the store within its refresh interval (app.mount.REFRESH_INTERVAL).
    wait_for(lambda: ckpt["id"] in listing(b.mount_dir / "jobs" / "w"), what="the second mount to show the checkpoint")
    b.cedana("checkpoint", "verify", f"w/{ckpt['id']}", check=True)  # every chunk is there, hashes right

    # Lazy restore on the second machine: same process, same memory.
    b.cedana("restore", "job", "w", "--lazy", "--streams", "4", check=True)
    new_pid, checksum = restored_checksum(b, "w", state)
    procs.watch(new_pid)
    assert new_pid == pid and checksum == info["checksum"]
    job_b = b.job("w")
    assert job_b["status"] in ALIVE and job_b["host"] == "host-b"

    # ...and back to the first machine, eagerly, from the checkpoint the second one made.
    b.cedana("dump", "job", "w", check=True)
    wait_for(lambda: not pid_alive(pid), what="the job to stop on the second machine")
    newest = b.checkpoints("w")[0]
    assert newest["host"] == "host-b" and len(b.checkpoints("w")) == 2
    wait_for(lambda: a.checkpoints("w")[0]["id"] == newest["id"], what="the first daemon to see the new checkpoint")
    a.cedana("restore", "job", "w", check=True)
    back_pid, checksum = restored_checksum(a, "w", state)
    procs.watch(back_pid)
    assert back_pid == pid and checksum == info["checksum"]


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_restore_on_a_second_machine_over_gcs(lazy, machines_gcs, procs):
    a = machines_gcs.start("gcs-a")
    b = machines_gcs.start("gcs-b")
    state = a.root / "g.json"
    info = run_workload(a, "g", state)
    procs.watch(info["pid"])
    a.cedana("dump", "job", "g", check=True)
    wait_for(lambda: not pid_alive(info["pid"]), what="the dumped job to stop")
    job_b = wait_for(lambda: b.jobs().get("g"), what="the second daemon to list the job")
    assert job_b["status"] == "remote"
    b.cedana("restore", "job", "g", *(["--lazy"] if lazy else []), check=True)
    new_pid, checksum = restored_checksum(b, "g", state)
    procs.watch(new_pid)
    assert checksum == info["checksum"]


def listing(path: Path) -> list[str]:
    """The names in a directory; none while it does not exist (yet)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
