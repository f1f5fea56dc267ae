"""The console of an attachable job (daemon/console.py) driven without the daemon: a job on its
pty, clients on socket pairs. Output reaches the log and every reader; a client that stops reading
is dropped and never stalls the job; input reaches the job.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from cedanafs.daemon.console import CLIENT_QUEUE, Console
from tests.fixtures_procs import wait_for

pytestmark = [pytest.mark.real, pytest.mark.timeout(120)]


@pytest.fixture
def console_job(tmp_path):
    """Start `sh -c SCRIPT` on a console's pty; yields (start, log path); everything ends at teardown."""
    made: list[tuple[Console, subprocess.Popen]] = []
    log_path = tmp_path / "job.log"

    def start(script: str) -> tuple[Console, subprocess.Popen]:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        console = Console("t", log_fd)
        proc = subprocess.Popen(["sh", "-c", script], stdin=console.slave, stdout=console.slave,
                                stderr=console.slave, start_new_session=True)
        console.start()
        made.append((console, proc))
        return console, proc

    try:
        yield start, log_path
    finally:
        for console, proc in made:
            proc.kill()
            proc.wait(timeout=10)
            console.close()


def client(console: Console) -> socket.socket:
    ours, theirs = socket.socketpair()
    console.attach(os.dup(theirs.fileno()))
    theirs.close()
    return ours


def read_until(sock: socket.socket, needle: bytes, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while needle not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_input_reaches_the_job_and_its_answer_every_reader_and_the_log(console_job):
    start, log_path = console_job
    console, _ = start('echo ready; while read -r l; do echo "got $l"; done')
    a = client(console)
    assert b"ready" in read_until(a, b"ready")  # the scrollback
    b = client(console)
    assert b"ready" in read_until(b, b"ready")
    a.sendall(b"ping\n")
    assert b"got ping" in read_until(a, b"got ping") and b"got ping" in read_until(b, b"got ping")
    wait_for(lambda: b"got ping" in log_path.read_bytes(), what="the answer in the log")


@pytest.mark.expect_warnings
def test_a_client_that_stops_reading_is_dropped_and_never_stalls_the_job(console_job):
    start, log_path = console_job
    lines = (CLIENT_QUEUE // 100) * 3  # three times what a client's queue may hold
    console, proc = start(f"sleep 0.5; i=0; while [ $i -lt {lines} ]; do printf '%099d\\n' $i; i=$((i+1)); done;"
                          " echo done; sleep 60")
    stuck = client(console)  # attached before the output starts, and never reads
    reader = client(console)
    assert b"done" in read_until(reader, b"done", timeout=90)
    wait_for(lambda: b"done" in log_path.read_bytes(), timeout=30, what="the whole output in the log")
    assert log_path.stat().st_size >= lines * 100
    stuck.settimeout(5)
    seen = 0
    while chunk := stuck.recv(1 << 20):  # what it had queued, then EOF: it was dropped
        seen += len(chunk)
    assert seen < lines * 100
    assert proc.poll() is None  # the job went on (now in its sleep)
