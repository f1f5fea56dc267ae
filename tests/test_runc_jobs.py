"""runc containers as daemon jobs (`run runc`, `manage runc`, `job list` TYPE runc, `dump job`,
`restore job`) and a TCP client keeping its connection across `dump runc` / `restore runc`
with --tcp-established (the container on the host's network: see docs/containers.md).
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from tests.fixtures_containers import wait_counting
from tests.fixtures_daemon import wait_status
from tests.fixtures_procs import wait_for
from tests.test_runc import (SCRIPT, assert_continues, assert_one_run, cedana, digest, log_numbers, ok,
                             one_line_error)

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]


def test_runc_job_run_dump_restore(daemon, runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    log = tmp_path / "job.log"
    out = daemon.cedana("run", "runc", "--bundle", bundle, "--id", "web", "--jid", "web1", "--root", runc_env.root,
                        "-o", log, check=True).stdout
    assert "Started job web1" in out
    job = daemon.job("web1")
    assert job["type"] == "runc" and job["status"] in ("running", "sleep")
    assert job["pid"] == runc_env.state("web")["pid"]
    wait_counting(bundle, above=3)
    wait_for(lambda: log_numbers(log), what="the job's output in its log")

    out = daemon.cedana("dump", "job", "web1", check=True).stdout
    path = out.strip().rsplit(" ", 1)[-1]
    assert os.path.dirname(path) == str(daemon.mount_dir / "jobs" / "web1")
    assert "container.json" in os.listdir(path)
    assert runc_env.status("web") is None
    # runc ended the container; it is halted once the machine's init has reaped it.
    job = wait_status(daemon, "web1", ("halted",))
    assert job["checkpoint"] == os.path.basename(path) and job["exit_code"] is None

    printed = len(log_numbers(log))
    out = daemon.cedana("restore", "job", "web1", check=True).stdout
    assert "Restored job web1" in out
    job = daemon.job("web1")
    assert job["type"] == "runc" and job["status"] in ("running", "sleep")
    assert job["pid"] == runc_env.state("web")["pid"]
    wait_for(lambda: len(log_numbers(log)) > printed + 3, what="the restored job's output in its log")
    assert_one_run(log_numbers(log), printed)
    after = log_numbers(log)[printed:]

    # The job's container is running: a second restore is refused in one line.
    r = daemon.cedana("restore", "job", "web1")
    one_line_error(r, 4, "still running")

    # Killed, its stopped container is replaced by the checkpoint's again: the counter goes back.
    daemon.cedana("job", "kill", "web1", check=True)
    wait_for(lambda: runc_env.status("web") == "stopped", what="the killed container to stop")
    wait_status(daemon, "web1", ("halted",))
    killed_at = len(log_numbers(log))
    daemon.cedana("restore", "job", "web1", check=True)
    assert runc_env.status("web") == "running"
    again = wait_for(lambda: (n := log_numbers(log)[killed_at:]) and len(n) > 3 and n, what="the output again")
    assert again[:3] == after[:3]  # the same checkpoint, the same continuation


def test_manage_runc_container_as_job(daemon, runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("adopted", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=2)
    log = tmp_path / "adj.log"
    out = daemon.cedana("manage", "runc", "adopted", "--root", runc_env.root, "--jid", "adj", "-o", log,
                        check=True).stdout
    assert "as job adj" in out
    job = daemon.job("adj")
    assert job["type"] == "runc" and job["pid"] == runc_env.state("adopted")["pid"] and job["log"] == str(log)
    one_line_error(daemon.cedana("manage", "runc", "adopted", "--root", runc_env.root), 4, "already managed")
    one_line_error(daemon.cedana("manage", "runc", "ghost", "--root", runc_env.root), 3, "ghost")

    daemon.cedana("dump", "job", "adj", check=True)
    daemon.cedana("restore", "job", "adj", check=True)
    assert runc_env.status("adopted") == "running"
    after = wait_for(lambda: (n := log_numbers(log)) and len(n) > 3 and n, what="the restored output in the job log")
    assert_continues(log_numbers(tmp_path / "before.log"), after)


def _echo(conn: socket.socket, text: bytes) -> bytes:
    conn.sendall(text)
    got = b""
    while not got.endswith(b"\n"):
        chunk = conn.recv(100)
        assert chunk, "the connection was closed"
        got += chunk
    return got


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_client_keeps_its_connection(runc_env, tmp_path):
    port = _free_port()
    bundle = runc_env.bundle("tcp", f"exec nc -l -p {port} -e cat", host_network=True)
    runc_env.start("echo", bundle, tmp_path / "before.log")
    conn = wait_for(lambda: _connect(port), what="the container's TCP server")
    with conn:
        assert _echo(conn, b"before\n") == b"before\n"
        ok("dump", "runc", "echo", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1",
           "--tcp-established")
        assert runc_env.status("echo") is None
        ok("restore", "runc", "--path", tmp_path / "c1", "--detach", "--out", tmp_path / "after.log")
        assert runc_env.status("echo") == "running"
        assert _echo(conn, b"after\n") == b"after\n"


def _connect(port: int) -> socket.socket | None:
    conn = socket.socket()
    conn.settimeout(10)
    try:
        conn.connect(("127.0.0.1", port))
    except OSError:
        conn.close()
        return None
    return conn


def test_run_runc_without_daemon_needs_a_bundle(runc_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CEDANA_ADDRESS", str(tmp_path / "no-daemon.sock"))
    one_line_error(cedana("run", "runc", "--bundle", tmp_path / "none", "--id", "x", "--root", runc_env.root,
                          "--detach", "-o", tmp_path / "x.log"), 3, "not an OCI bundle")
    assert runc_env.status("x") is None


LO_UP = """#!/bin/sh
# OCI prestart hook: bring up loopback in the container's network namespace (state JSON on stdin).
pid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
exec nsenter -t "$pid" -n ip link set lo up
"""


def test_tcp_inside_the_containers_own_network_namespace(runc_env, tmp_path):
    """runc checkpoints a network namespace empty (`--empty-ns network`): the bundle's prestart hook
    sets it up again on restore (here: loopback), and CRIU then restores the connection inside it."""
    hook = runc_env.base / "lo-up.sh"
    hook.write_text(LO_UP)
    hook.chmod(0o755)
    script = ("nc -l -p 9000 -e cat & sleep 0.5; i=0;"
              " (while true; do i=$((i+1)); echo $i; sleep 0.1; done) | nc 127.0.0.1 9000 > /data/echo")
    bundle = runc_env.bundle("netns", script)
    spec = json.loads((bundle / "config.json").read_text())
    spec["hooks"] = {"prestart": [{"path": str(hook)}]}
    (bundle / "config.json").write_text(json.dumps(spec))
    echoed = bundle / "rootfs" / "data" / "echo"
    runc_env.start("inner", bundle, tmp_path / "before.log")
    wait_for(lambda: len(echoed.read_text().split()) > 3 if echoed.exists() else False, what="the echo to flow")

    ok("dump", "runc", "inner", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1", "--tcp-established")
    at_dump = len(echoed.read_text().split())
    ok("restore", "runc", "--path", tmp_path / "c1", "--detach", "--out", tmp_path / "after.log")
    wait_for(lambda: len(echoed.read_text().split()) > at_dump + 5, what="the echo to flow after restore")
    values = [int(v) for v in echoed.read_text().split()]
    assert values == list(range(1, len(values) + 1))  # one connection, no gap, no restart


def test_failed_restore_leaves_no_container_and_the_checkpoint_intact(runc_env, tmp_path):
    """Without a hook to bring its network back, CRIU cannot reconnect the container's inner TCP
    connection: the restore fails in one line, runc has no half-made container, the checkpoint is as it was."""
    script = ("nc -l -p 9000 -e cat & sleep 0.5;"
              " (while true; do echo x; sleep 0.1; done) | nc 127.0.0.1 9000 > /data/echo")
    bundle = runc_env.bundle("netns", script)
    runc_env.start("inner", bundle, tmp_path / "before.log")
    echoed = bundle / "rootfs" / "data" / "echo"
    wait_for(lambda: len(echoed.read_text().split()) > 3 if echoed.exists() else False, what="the echo to flow")
    ok("dump", "runc", "inner", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1", "--tcp-established")
    before = digest(tmp_path / "c1")
    one_line_error(cedana("restore", "runc", "--path", tmp_path / "c1", "--detach", "--out", tmp_path / "a.log"), 6,
                   "runc restore of inner failed")
    assert runc_env.status("inner") is None and runc_env.ids() == []
    assert digest(tmp_path / "c1") == before


def test_container_jobs_are_roots(daemon, runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    r = daemon.cedana("run", "runc", "--bundle", bundle, "--id", "x", "--root", runc_env.root, "-o",
                      tmp_path / "x.log", as_nobody=True)
    one_line_error(r, 77, "root")
    assert runc_env.status("x") is None and daemon.jobs() == {}
