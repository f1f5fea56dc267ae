"""Programs nobody here wrote the CRIU side of, as managed jobs: sockets, sqlite, shell loops, pipelines.

Real daemon, real mount, real CRIU. Each checks what a user of such a program cares about: the
TCP client keeps its connection, the database goes on with no gap, the loop keeps counting, and
nothing of a dumped or killed job is left behind.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures_daemon import ALIVE, settle, wait_status
from tests.fixtures_procs import PROGRAMS, read_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

NET = PROGRAMS / "net.py"
SQLITE = PROGRAMS / "sqlite_wal.py"


def run_job(daemon, jid: str, *cmd) -> int:
    daemon.cedana("run", "process", "--jid", jid, "-o", daemon.root / f"{jid}.log", "--", *cmd, check=True)
    return daemon.job(jid)["pid"]


def session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def latest_state(daemon, jid: str) -> dict:
    return json.loads((daemon.mount_dir / "jobs" / jid / "latest" / "process_state.json").read_text())


def lazy_args(lazy: bool) -> list[str]:
    return ["--lazy"] if lazy else []


def counting(path: Path, above: int) -> bool:
    values = read_lines(path)
    return bool(values) and values[-1] >= above


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_tcp_client_keeps_its_connection_through_a_job(daemon, lazy):
    d = daemon.root / "tcp"
    d.mkdir()
    pid = run_job(daemon, "tcp", sys.executable, NET, "tcp", d)
    wait_for(lambda: counting(d / "count", 5), what="the client to count over its connection")
    daemon.cedana("dump", "job", "tcp", "--tcp-established", check=True)
    assert not session(pid), "processes of the dumped job were left behind"
    at_dump = read_lines(d / "count")[-1]
    assert latest_state(daemon, "tcp")["criu"]["tcp_established"] is True
    dump_log = daemon.mount_dir / "jobs" / "tcp" / "latest" / "criu-dump.log"
    assert "Dumping finished successfully" in dump_log.read_text(), "CRIU's log was not copied into the checkpoint"

    daemon.cedana("restore", "job", "tcp", *lazy_args(lazy), check=True)  # the recorded flag applies
    wait_for(lambda: counting(d / "count", at_dump + 10), what="the restored client to go on")
    assert not (d / "broken").exists(), f"the connection broke: {(d / 'broken').read_text()}"
    values = read_lines(d / "count")
    assert values == list(range(1, len(values) + 1)), "the client reconnected or skipped instead of going on"
    port = int((d / "port").read_text())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.makefile().readline() == "hello 2\n", "the restored listening socket does not serve"
    assert daemon.job("tcp")["status"] in ALIVE


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_udp_socket_answers_after_restore(daemon, lazy):
    d = daemon.root / "udp"
    d.mkdir()
    run_job(daemon, "udp", sys.executable, NET, "udp", d)
    port = int(wait_for(lambda: (d / "port").exists() and (d / "port").read_text(), what="the UDP port"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    try:
        sock.sendto(b"a", ("127.0.0.1", port))
        assert sock.recv(64) == b"1 a"
        daemon.cedana("dump", "job", "udp", check=True)
        daemon.cedana("restore", "job", "udp", *lazy_args(lazy), check=True)
        sock.sendto(b"b", ("127.0.0.1", port))
        assert sock.recv(64) == b"2 b", "the restored UDP server lost its state or its socket"
    finally:
        sock.close()


def rows(db: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY n")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_sqlite_wal_writer_as_a_job_with_file_locks(daemon, lazy):
    db = daemon.root / "data.db"
    pid = run_job(daemon, "sql", sys.executable, SQLITE, db)
    wait_for(lambda: len(rows(db)) >= 5, what="the writer to insert rows")
    if not lazy:  # a dump without --file-locks fails, says why, and keeps CRIU's log where it says
        failed = daemon.cedana("dump", "job", "sql")
        assert failed.returncode != 0
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and "--file-locks" in lines[0] and "RLIMIT" not in lines[0], failed.stderr
        kept = Path(lines[0].rsplit("(log: ", 1)[1].rstrip(")"))
        assert kept.parent == daemon.db_path.parent / "failed-dumps" and "file-locks" in kept.read_text()
        assert "dump failed" in daemon.log_tail(40)
        before = len(rows(db))
        wait_for(lambda: len(rows(db)) > before + 3, what="the writer to go on after the failed dump")
    # Read before the dump only: a reader opening the database while the writer is gone would be
    # its last connection and reset the shared-memory index that the checkpoint still maps.
    at_dump = len(rows(db))
    daemon.cedana("dump", "job", "sql", "--file-locks", check=True)
    assert not session(pid)
    assert latest_state(daemon, "sql")["criu"]["file_locks"] is True
    daemon.cedana("restore", "job", "sql", *lazy_args(lazy), check=True)  # --file-locks as recorded
    # No reader while the restored writer runs: CRIU 4.2.1 restores its lock on the database but
    # not the one on the -shm index (plain `criu restore --file-locks` alike), so a reader opening
    # now would take itself for the first connection, reset the index and the writer would die of
    # SIGBUS on its mapping of it. Its rows are counted once it is stopped.
    wait_for(lambda: daemon.root.joinpath("data.db-wal").stat().st_mtime > time.time() - 0.5, timeout=20,
             what="the restored writer to write")
    time.sleep(1.5)
    assert daemon.job("sql")["status"] in ALIVE, "the restored writer died"
    daemon.cedana("job", "kill", "sql", check=True)
    wait_status(daemon, "sql", ("halted",))
    values = rows(db)
    assert len(values) >= at_dump + 10, "the restored writer did not go on"
    assert values == list(range(1, len(values) + 1)), "rows were lost or repeated across the restore"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_shell_loop_dumped_and_restored_three_times(daemon, lazy):
    out = daemon.root / "loop.count"
    pid = run_job(daemon, "loop", "sh", "-c", f'i=0; while :; do i=$((i+1)); echo $i >> {out}; sleep 0.02; done')
    wait_for(lambda: counting(out, 5), what="the loop to count")
    for round_ in range(3):
        daemon.cedana("dump", "job", "loop", check=True)
        settle()
        left = [(p.pid, p.status()) for p in session(pid)]
        assert not left, f"round {round_ + 1}: the dump left processes of the job behind: {left}"
        at_dump = read_lines(out)[-1]
        daemon.cedana("restore", "job", "loop", *lazy_args(lazy), check=True)
        wait_for(lambda: counting(out, at_dump + 5), what="the restored loop to go on")
    values = read_lines(out)
    assert values == list(range(1, len(values) + 1))


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_failed_restore_is_reaped_and_retry_works(daemon, lazy):
    out = daemon.root / "c.count"
    run_job(daemon, "retry", sys.executable, PROGRAMS / "counter.py", out)
    wait_for(lambda: counting(out, 5), what="the counter to count")
    daemon.cedana("dump", "job", "retry", check=True)
    at_dump = read_lines(out)[-1]
    moved = out.with_name("moved")
    out.rename(moved)  # the file the process has open is gone: CRIU fails inside the restored tree
    failed = daemon.cedana("restore", "job", "retry", *lazy_args(lazy))
    assert failed.returncode != 0 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert daemon.job("retry")["status"] == "halted"
    zombies = [c.pid for c in psutil.Process(daemon.proc.pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    assert not zombies, f"the failed restore left zombies in the daemon: {zombies}"
    moved.rename(out)
    daemon.cedana("restore", "job", "retry", *lazy_args(lazy), check=True)  # at once, same daemon
    wait_for(lambda: counting(out, at_dump + 5), what="the retried restore to go on")
    assert daemon.job("retry")["status"] in ALIVE


def test_job_kill_ends_a_whole_pipeline(daemon):
    pid = run_job(daemon, "pipe", "sh", "-c", "sleep 1000 | sleep 1001 | cat")
    members = wait_for(lambda: len(session(pid)) >= 4 and session(pid), what="the pipeline to start")
    daemon.cedana("job", "kill", "pipe", check=True)
    wait_for(lambda: not session(pid), what="every process of the pipeline to end")
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in members)
    wait_status(daemon, "pipe", ("halted",))
