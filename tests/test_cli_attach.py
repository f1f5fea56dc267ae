"""Getting back to a job through the real daemon: `attach` in a real terminal (tmux), `job logs -f`,
the job's output directory (job.log_dir) and `job delete` removing the log.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid

import pytest

import psutil

from tests.fixtures_daemon import ALIVE, NOBODY, wait_status
from tests.fixtures_procs import CEDANA, ROOT, pid_alive, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]

# Answers every line it reads; says so first, so an attacher sees a prompt-like line in the scrollback.
ANSWERER = "echo ready; while read -r line; do echo \"answer: $line\"; done"


class Tmux:
    """A private tmux server (its own socket) with one window running bash; killed at the end."""

    def __init__(self, env: dict[str, str]):
        self.name = f"cedana-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self._tmux("new-session", "-d", "-s", "t", "-x", "160", "-y", "40", "bash --norc --noprofile")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, env=self.env, timeout=30).stdout

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t", "-S", "-200")

    def wait_screen(self, needle: str, timeout: float = 30) -> str:
        return wait_for(lambda: needle in (s := self.screen()) and s, timeout=timeout,
                        what=f"{needle!r} on the terminal")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=30)


@pytest.fixture
def tmux(daemon):
    term = Tmux(daemon.env | {"TERM": "xterm"})
    try:
        yield term
    finally:
        term.kill()


def run_json(daemon, command: str, *args: str) -> dict:
    """`run process`/`exec` with --output json (before the command, which takes every later word)."""
    sub = ("process",) if command == "run" else ()
    rest = args[len(sub):]
    return json.loads(daemon.cedana(command, *sub, "--output", "json", *rest, check=True).stdout)


def cedana_line(*args: str) -> str:
    return " ".join(shlex.quote(str(a)) for a in [*CEDANA, *args])


def test_attach_in_a_terminal_answers_detaches_and_the_job_goes_on(daemon, tmux):
    started = run_json(daemon, "run", "process", "--jid", "talker", "--attachable", "--", "sh", "-c", ANSWERER)
    pid = started["pid"]
    log = daemon.root / "joblogs" / "cedana-output-talker.log"
    wait_for(lambda: log.exists() and "ready" in log.read_text(), what="the job's first line in its log")

    tmux.type(f"cd {shlex.quote(str(ROOT))}; {cedana_line('attach', pid)}")
    tmux.wait_screen("[attached to job talker")
    tmux.wait_screen("ready")  # the scrollback: what the job said before we came
    tmux.type("hello cedana")
    tmux.wait_screen("answer: hello cedana")

    tmux.keys("C-p", "C-q")
    tmux.wait_screen("[detached from job talker]")
    tmux.type("echo shell-is-back")
    tmux.wait_screen("\nshell-is-back")
    assert pid_alive(pid) and daemon.job("talker")["status"] in ALIVE
    assert "answer: hello cedana" in log.read_text()

    tmux.type(cedana_line("job", "attach", "talker"))  # again, by JID
    wait_for(lambda: tmux.screen().count("[attached to job talker") == 2, what="the second attach")
    tmux.type("second time")
    tmux.wait_screen("answer: second time")
    tmux.keys("C-p", "C-q")
    wait_for(lambda: tmux.screen().count("[detached from job talker]") == 2, what="the second detach")
    assert pid_alive(pid)
    refused = daemon.cedana("dump", "job", "talker")  # not yet: its terminal is outside what CRIU dumps
    assert refused.returncode == 2 and "attachable" in refused.stderr and pid_alive(pid)


def test_attach_refuses_a_job_that_is_not_attachable(daemon):
    daemon.cedana("run", "process", "--jid", "plain", "--", "sleep", "600", check=True)
    pid = daemon.job("plain")["pid"]
    result = daemon.cedana("attach", pid)
    assert result.returncode == 3 and "not attachable" in result.stderr and "--attachable" in result.stderr
    assert daemon.cedana("job", "attach", "nosuch").returncode == 3


def test_job_logs_follow_until_the_job_ends_and_delete_removes_the_log(daemon):
    script = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.4; done"
    daemon.cedana("run", "process", "--jid", "chatty", "--", "sh", "-c", script, check=True)
    log = daemon.root / "joblogs" / "cedana-output-chatty.log"
    assert daemon.job("chatty")["log"] == str(log)
    follow = subprocess.Popen([*CEDANA, "job", "logs", "chatty", "-f"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=daemon.env, cwd=str(ROOT))
    try:
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert out.split() == [f"line{i}" for i in range(1, 7)]  # every line, once, and it ended with the job
    wait_status(daemon, "chatty", ("halted",))
    assert daemon.cedana("job", "logs", "chatty", check=True).stdout.split()[-1] == "line6"

    deleted = daemon.cedana("delete", "chatty", "--yes", check=True)
    assert "Deleted job chatty" in deleted.stdout
    assert not log.exists()
    assert daemon.cedana("job", "logs", "chatty").returncode == 3


def test_run_process_refuses_an_unknown_option_before_the_command(daemon):
    result = daemon.cedana("run", "process", "--bogus", "sleep", "1")
    assert result.returncode == 2 and "no such option: --bogus" in result.stderr
    assert daemon.json("job", "list") == []


def test_exec_is_run_process_and_kill_ends_jobs(daemon):
    started = run_json(daemon, "exec", "--jid", "viaexec", "--", sys.executable, "-c", "import time; time.sleep(600)")
    assert started["job"] == "viaexec" and pid_alive(started["pid"])
    killed = daemon.json("kill", "viaexec")
    assert [{k: v for k, v in r.items() if k != "pids"} for r in killed] == \
        [{"job": "viaexec", "pid": started["pid"], "signal": "SIGKILL"}]
    assert started["pid"] in killed[0]["pids"]  # the whole session of the job was signalled
    wait_status(daemon, "viaexec", ("halted",))


def test_detach_keys_are_found_even_split_across_reads():
    from cedanafs.cli.attach import _Relay

    relay = _Relay(None)
    assert relay._keys(b"ab\x10") == (b"ab", False)  # a Ctrl-P is held back ...
    assert relay._keys(b"\x11") == (b"", True)  # ... and with Ctrl-Q it detaches
    relay = _Relay(None)
    assert relay._keys(b"\x10") == (b"", False)
    assert relay._keys(b"x") == (b"\x10x", False)  # a lone Ctrl-P goes to the job after all
    assert relay._keys(b"ls\x10\x11rest") == (b"ls", True)


def test_a_user_attaches_to_their_own_job_from_a_script_and_not_to_roots(daemon):
    logs = daemon.root / "nobody-logs"
    logs.mkdir()
    logs.chmod(0o777)
    mine = daemon.cedana("run", "process", "--jid", "theirs", "--attachable", "-o", logs / "t.log", "--", "sh", "-c",
                         ANSWERER, as_nobody=True)
    assert mine.returncode == 0, mine.stderr
    pid = daemon.job("theirs")["pid"]
    assert psutil.Process(pid).uids().real == NOBODY
    wait_for(lambda: "ready" in (logs / "t.log").read_text(), what="the job's first line")
    piped = daemon.cedana("attach", pid, as_nobody=True, input="from a script\n", timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "answer: from a script" in piped.stdout and pid_alive(pid)

    ending = daemon.cedana("run", "process", "--jid", "ends", "--attachable", "-o", logs / "e.log", "--", "sh", "-c",
                           "read -r line; echo \"bye $line\"; exit 3", as_nobody=True)
    assert ending.returncode == 0, ending.stderr
    attached = daemon.cedana("job", "attach", "ends", as_nobody=True, input="now\n", timeout=60)
    assert attached.returncode == 3 and "bye now" in attached.stdout  # the job's own exit code
    assert "[job ends ended, exit code 3]" in attached.stderr

    daemon.cedana("run", "process", "--jid", "roots", "--attachable", "--", "sleep", "600", check=True)
    denied = daemon.cedana("job", "attach", "roots", as_nobody=True)
    assert denied.returncode == 77 and "another user" in denied.stderr


def test_an_attachable_job_outlives_its_daemon_and_is_attached_again(daemon):
    daemon.cedana("run", "process", "--jid", "lasting", "--attachable", "--", "sh", "-c", ANSWERER, check=True)
    pid = daemon.job("lasting")["pid"]
    daemon.cedana("daemon", "stop", check=True)
    time.sleep(1)  # a hung-up terminal would have ended it by now
    assert pid_alive(pid)
    daemon.start()
    assert daemon.job("lasting")["status"] in ALIVE
    again = daemon.cedana("attach", pid, input="still there\n", timeout=60)
    assert again.returncode == 0 and "answer: still there" in again.stdout, again.stderr
