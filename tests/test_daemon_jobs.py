"""The daemon end to end: managed jobs run, dumped into the mount, restored as the daemon's children.

Real daemon, real mount, real CRIU; each test has its own socket, database, store and mount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.fixtures_daemon import ALIVE, settle, wait_status
from tests.fixtures_procs import PROGRAMS, pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]

COUNTER = PROGRAMS / "counter.py"


def run_counter(daemon, jid: str, *extra: str):
    out = daemon.root / f"{jid}.count"
    log = daemon.root / f"{jid}.log"
    daemon.cedana("run", "process", "--jid", jid, "-o", log, "--", sys.executable, COUNTER, out, "--stdout",
                  *extra, check=True)
    wait_for(lambda: len(read_lines(out)) >= 5, what="the counter to count")
    return out, log


def assert_continues(out, at_dump: int) -> None:
    wait_for(lambda: read_lines(out) and read_lines(out)[-1] >= at_dump + 5, what="the restored counter to go on")
    values = read_lines(out)
    assert values == list(range(1, len(values) + 1)), "the counter restarted or skipped instead of continuing"


def assert_stopped(out) -> int:
    at_dump = read_lines(out)[-1]
    settle()
    assert read_lines(out)[-1] == at_dump, "the job kept running after a dump without --leave-running"
    return at_dump


def test_run_list_dump_restore_twice(daemon):
    out, log = run_counter(daemon, "c1")
    job = daemon.job("c1")
    assert job["status"] in ALIVE and job["type"] == "process" and job["log"] == str(log)
    pid = job["pid"]
    for round_ in (1, 2):
        daemon.cedana("dump", "job", "c1", check=True)
        rows = daemon.checkpoints("c1")
        assert len(rows) == round_
        assert rows[0]["id"] in os.listdir(daemon.mount_dir / "jobs" / "c1")
        assert rows[0]["path"] == str(daemon.mount_dir / "jobs" / "c1" / rows[0]["id"])
        assert (daemon.mount_dir / "jobs" / "c1" / rows[0]["id"] / "inventory.img").exists()
        at_dump = assert_stopped(out)
        assert wait_status(daemon, "c1", ("halted",))["checkpoint"] == rows[0]["id"]

        daemon.cedana("restore", "job", "c1", check=True)
        assert_continues(out, at_dump)
        job = daemon.job("c1")
        assert job["status"] in ALIVE and job["pid"] == pid
        assert int(log.read_text().split()[-1]) > at_dump, "the job's log did not go on after the restore"
    table = daemon.cedana("job", "list", check=True).stdout.splitlines()
    assert table[0].split() == ["JOB", "TYPE", "PID", "STATUS", "GPU", "CHECKPOINT", "SIZE", "LOG"]
    assert table[1].split()[:4] in (["c1", "process", str(pid), s] for s in ALIVE)


def test_restore_older_checkpoint_by_id(daemon):
    out, _ = run_counter(daemon, "old")
    daemon.cedana("dump", "job", "old", "--leave-running", check=True)
    first = daemon.checkpoints("old")[0]["id"]
    at_first = read_lines(out)[-1]
    wait_for(lambda: read_lines(out)[-1] >= at_first + 20, what="the counter to move on")
    daemon.cedana("dump", "job", "old", check=True)
    rows = daemon.checkpoints("old")
    assert [r["id"] for r in rows][1] == first and len(rows) == 2, "checkpoints are not newest first"
    at_second = assert_stopped(out)

    daemon.cedana("restore", "job", "old", "--checkpoint", first, check=True)
    wait_for(lambda: len(read_lines(out)) > at_second + 3, what="the restored counter to count")
    after = read_lines(out)[at_second:]
    # The older checkpoint was taken around at_first: the counter goes on from there, not from at_second.
    assert after[0] <= at_first + 3 < at_second, (at_first, at_second, after[:5])
    assert after == list(range(after[0], after[0] + len(after)))


def test_attach_runs_in_the_foreground_with_the_exit_code(daemon):
    out = daemon.root / "att.count"
    result = daemon.cedana("run", "process", "--jid", "att", "--attach", "--", sys.executable, COUNTER, out,
                           "--stdout", "--limit", "20", "--exit-code", "3", timeout=60)
    assert result.returncode == 3, result.stderr
    assert [int(x) for x in result.stdout.split()] == list(range(1, 21))
    job = daemon.job("att")
    assert job["status"] == "halted" and job["exit_code"] == 3


def test_exit_code_of_a_job_is_recorded(daemon):
    out, _ = run_counter(daemon, "short", "--limit", "10", "--exit-code", "5")
    wait_status(daemon, "short", ("halted",))
    assert json.loads(daemon.cedana("job", "inspect", "short", check=True).stdout)["exit_code"] == 5
    assert read_lines(out)[-1] == 10


def test_manage_adopts_a_running_process(daemon, procs):
    out = daemon.root / "m.count"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 5, what="the counter to count")
    daemon.cedana("manage", "process", proc.pid, "--jid", "m1", check=True)
    assert daemon.job("m1")["pid"] == proc.pid
    daemon.cedana("dump", "job", "m1", check=True)
    proc.wait(timeout=10)
    at_dump = assert_stopped(out)
    daemon.cedana("restore", "job", "m1", check=True)
    procs.watch(proc.pid)
    assert_continues(out, at_dump)
    assert daemon.job("m1")["status"] in ALIVE


def test_kill_and_delete(daemon):
    out, _ = run_counter(daemon, "k1")
    daemon.cedana("dump", "job", "k1", "--leave-running", check=True)
    busy = daemon.cedana("job", "delete", "k1", "--yes")
    assert busy.returncode != 0 and "running" in busy.stderr
    daemon.cedana("job", "kill", "k1", check=True)
    wait_status(daemon, "k1", ("halted",))
    unconfirmed = daemon.cedana("job", "delete", "k1")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    daemon.cedana("job", "delete", "k1", "--yes", check=True)
    assert "k1" not in daemon.jobs()
    wait_for(lambda: not (daemon.mount_dir / "jobs" / "k1").exists()
             or not [n for n in os.listdir(daemon.mount_dir / "jobs" / "k1") if n != "latest"],
             what="the job's checkpoints to leave the mount")


def test_sigterm_unmounts_and_leaves_jobs_running(daemon_env):
    daemon = daemon_env
    daemon.start()
    out, _ = run_counter(daemon, "keep")
    pid = daemon.job("keep")["pid"]
    assert daemon.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(daemon.mount_dir), "the daemon did not unmount on SIGTERM"
    assert not daemon.address.exists()
    assert pid_alive(pid)
    seen = read_lines(out)[-1]
    wait_for(lambda: read_lines(out)[-1] > seen + 3, what="the job to keep running without the daemon")
    daemon.start()
    assert daemon.job("keep")["status"] in ALIVE and daemon.job("keep")["pid"] == pid


def test_sigkill_and_restart_keeps_jobs_and_checkpoints(daemon_env):
    daemon = daemon_env
    daemon.start()
    out_a, _ = run_counter(daemon, "a")
    run_counter(daemon, "b")
    out_c, _ = run_counter(daemon, "c")
    daemon.cedana("dump", "job", "a", check=True)
    at_dump = assert_stopped(out_a)
    ckpt = daemon.checkpoints("a")[0]["id"]
    os.kill(daemon.job("c")["pid"], signal.SIGKILL)
    wait_status(daemon, "c", ("halted",))
    pid_b = daemon.job("b")["pid"]

    daemon.stop(signal.SIGKILL)
    daemon.start()
    jobs = daemon.jobs()
    assert jobs["a"]["status"] == "halted" and jobs["a"]["checkpoint"] == ckpt
    assert jobs["b"]["status"] in ALIVE and jobs["b"]["pid"] == pid_b
    assert jobs["c"]["status"] == "halted"
    assert [r["id"] for r in daemon.checkpoints("a")] == [ckpt]
    daemon.cedana("checkpoint", "verify", f"a/{ckpt}", check=True)  # every chunk there, hashes right
    daemon.cedana("restore", "job", "a", check=True)
    assert_continues(out_a, at_dump)
    # b is no child of the new daemon: its end is seen by polling.
    os.kill(pid_b, signal.SIGKILL)
    wait_status(daemon, "b", ("halted",))
    assert read_lines(out_c)


def test_sigkill_during_a_dump_loses_nothing(daemon_env, procs):
    daemon = daemon_env
    daemon.start()
    state = daemon.root / "w.json"
    daemon.cedana("run", "process", "--jid", "w", "-o", daemon.root / "w.log", "--", sys.executable,
                  PROGRAMS.parent.parent / "bench" / "workload.py", "--size", "512M", "--state", state, check=True)
    wait_for(state.exists, timeout=120, what="the workload to fill its memory")
    pid = daemon.job("w")["pid"]
    jobdir = daemon.mount_dir / "jobs" / "w"
    dumping = subprocess.Popen([sys.executable, "-m", "cedanafs.cli", "dump", "job", "w"], env=daemon.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: jobdir.exists() and [n for n in os.listdir(jobdir) if n != "latest"], timeout=60,
                 interval=0.01, what="the dump to start writing into the mount")
        time.sleep(0.2)
        daemon.stop(signal.SIGKILL)
    finally:
        dumping.wait(timeout=60)
    daemon.start()
    assert daemon.checkpoints("w") == [], "a checkpoint the daemon never sealed is listed"
    assert daemon.cedana("checkpoint", "list", "--job", "w", "--output", "json", check=True).stdout.strip() == "[]"
    assert "discarding unfinished checkpoint" in daemon.log_path.read_text(), "the dump was not interrupted"
    left = [n for n in os.listdir(jobdir) if n != "latest"] if jobdir.exists() else []
    assert left == [], f"the unfinished checkpoint is still in the mount: {left}"
    job = wait_status(daemon, "w", ALIVE)
    assert job["pid"] == pid, "the process of the interrupted dump was not resumed"
    wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, what="the process to be resumed")


def test_lazy_restore_is_a_child_of_the_daemon(daemon):
    out, _ = run_counter(daemon, "lz")
    daemon.cedana("dump", "job", "lz", check=True)
    at_dump = assert_stopped(out)
    daemon.cedana("restore", "job", "lz", "--lazy", check=True)
    assert_continues(out, at_dump)
    pid = daemon.job("lz")["pid"]
    assert psutil.Process(pid).ppid() == daemon.proc.pid, "the restored job is not the daemon's child"
    daemon.cedana("job", "kill", "lz", check=True)
    assert wait_status(daemon, "lz", ("halted",))["exit_code"] == 128 + signal.SIGKILL


def test_restored_job_exit_is_tracked(daemon):
    out, _ = run_counter(daemon, "ex", "--limit", "60", "--exit-code", "9")
    daemon.cedana("dump", "job", "ex", check=True)
    assert_stopped(out)
    daemon.cedana("restore", "job", "ex", check=True)
    job = wait_status(daemon, "ex", ("halted",), timeout=30)
    assert job["exit_code"] == 9 and read_lines(out) == list(range(1, 61))


def test_dump_and_restore_process_go_through_the_daemon(daemon, procs):
    out = daemon.root / "p.count"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 5, what="the counter to count")
    daemon.cedana("dump", "process", proc.pid, "--dir", daemon.root, "--name", "pck", "--compression", "gzip",
                  check=True)
    proc.wait(timeout=10)
    at_dump = assert_stopped(out)
    assert f"criu dump pid={proc.pid}" in daemon.log_path.read_text(), "the dump did not go through the daemon"
    daemon.cedana("restore", "process", "--path", daemon.root / "pck.tar.gz", "--pid-file", daemon.root / "pid",
                  check=True)
    procs.watch(int((daemon.root / "pid").read_text()))
    assert "criu restore dir=" in daemon.log_path.read_text()
    assert_continues(out, at_dump)
