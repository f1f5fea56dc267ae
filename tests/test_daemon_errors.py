"""Bad input to the daemon and the job commands: each a clear one-line error and a non-zero exit."""

from __future__ import annotations

import sys

import pytest

from tests.fixtures_daemon import wait_status
from tests.fixtures_procs import PROGRAMS, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]


def one_line_error(result, code: int, *words: str) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_job_commands_without_a_daemon(daemon_env):
    for args in (("job", "list"), ("daemon", "check"), ("dump", "job", "x"), ("run", "process", "--", "true")):
        one_line_error(daemon_env.cedana(*args), 10, "no cedana daemon is listening")


def test_unknown_jid(daemon):
    for args in (("dump", "job", "nope"), ("restore", "job", "nope"), ("job", "kill", "nope"),
                 ("job", "checkpoints", "nope"), ("job", "inspect", "nope"), ("job", "delete", "nope", "--yes")):
        one_line_error(daemon.cedana(*args), 3, "nope")


def test_restore_of_a_running_job(daemon):
    out = daemon.root / "r.count"
    daemon.cedana("run", "process", "--jid", "r", "-o", daemon.root / "r.log", "--", sys.executable,
                  PROGRAMS / "counter.py", out, check=True)
    wait_for(lambda: len(read_lines(out)) >= 3, what="the counter to count")
    daemon.cedana("dump", "job", "r", "--leave-running", check=True)
    one_line_error(daemon.cedana("restore", "job", "r"), 4, "still running")


def test_dump_of_a_job_whose_process_exited(daemon):
    out = daemon.root / "e.count"
    daemon.cedana("run", "process", "--jid", "e", "-o", daemon.root / "e.log", "--", sys.executable,
                  PROGRAMS / "counter.py", out, "--limit", "3", "--exit-code", "4", check=True)
    wait_status(daemon, "e", ("halted",))
    message = one_line_error(daemon.cedana("dump", "job", "e"), 3, "no process to dump", "halted")
    assert "exit code 4" in message
    assert daemon.checkpoints("e") == []
    one_line_error(daemon.cedana("restore", "job", "e"), 3, "no checkpoints")
    one_line_error(daemon.cedana("restore", "job", "e", "--checkpoint", "20990101T000000Z-ffff"), 3)


def test_second_daemon_on_the_same_socket(daemon):
    second = daemon.spawn()
    try:
        code = second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert code == 4
    assert "already running" in daemon.log_tail(3)
    assert daemon.cedana("daemon", "check").returncode == 0, "the first daemon was disturbed"


def test_bad_run_requests(daemon):
    one_line_error(daemon.cedana("run", "process", "--jid", "../x", "--", "true"), 2, "job name")
    one_line_error(daemon.cedana("run", "process", "--jid", "nx", "-o", daemon.root / "nx.log", "--",
                                 "/no/such/program"), 3, "cannot run")
    one_line_error(daemon.cedana("run", "process", "--attach", "-o", "x", "--", "true"), 2, "--attach")
    daemon.cedana("run", "process", "--jid", "dup", "-o", daemon.root / "d.log", "--", "sleep", "60", check=True)
    one_line_error(daemon.cedana("run", "process", "--jid", "dup", "-o", daemon.root / "d.log", "--", "true"),
                   4, "already exists")
    one_line_error(daemon.cedana("run", "process", "--jid", "nolog", "-o", "/no/such/dir/x.log", "--", "true"),
                   2, "cannot write")
