"""An interactive bash in a real terminal (tmux, driven with send-keys, read with capture-pane) is
detected as a shell job, dumped, and restored with `--no-server` onto another terminal, where it
takes typed input again and its exit code comes back through cedana.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import psutil
import pytest

from tests.fixtures_procs import CEDANA, ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(180)]


class Tmux:
    """A private tmux server (its own socket), killed at teardown."""

    def __init__(self, socket: str):
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=30).stdout

    def type(self, window: str, line: str) -> None:
        self("send-keys", "-t", f"t:{window}", "-l", line)
        self("send-keys", "-t", f"t:{window}", "Enter")

    def screen(self, window: str) -> str:
        return self("capture-pane", "-p", "-t", f"t:{window}")

    def wait_text(self, window: str, text: str, timeout: float = 60) -> str:
        try:
            return wait_for(lambda: text in self.screen(window) and self.screen(window), timeout=timeout,
                            what=f"{text!r} in the {window} terminal")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the terminal shows:\n{self.screen(window).strip()}") from None


@pytest.fixture
def tmux(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run `make setup`")
    t = Tmux(str(tmp_path / "tmux.sock"))
    shell = "bash --norc --noprofile"
    t("new-session", "-d", "-s", "t", "-x", "160", "-y", "40", "-n", "home", shell)
    # The victim bash leads its own session on the pane's terminal (setsid -c), under a parent that
    # waits for it (setsid -w), so its end is reaped at once and its pid is free for the restore.
    t("new-window", "-t", "t", "-n", "victim", f"setsid -w -c {shell}")
    try:
        yield t
    finally:
        subprocess.run(["tmux", "-S", t.socket, "kill-server"], capture_output=True)


def test_interactive_bash_restored_in_a_terminal_takes_input(tmux, tmp_path, procs):
    tmux.type("victim", "SECRET=4242; PS1='restored> '")
    tmux.wait_text("victim", "restored>")
    pane = int(tmux("display", "-p", "-t", "t:victim", "#{pane_pid}"))
    pid = wait_for(lambda: psutil.Process(pane).children(), what="the victim bash").pop().pid
    procs.watch(pid)
    assert os.getsid(pid) == pid, "the victim bash should lead its session (a shell job by its terminal alone)"
    dump = subprocess.run([*CEDANA, "dump", "process", str(pid), "--dir", str(tmp_path), "--name", "sh",
                           "--no-server"], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert dump.returncode == 0, dump.stderr
    state = json.loads((tmp_path / "sh" / "process_state.json").read_text())
    assert state["shell_job"] is True and state["criu"]["shell_job"] is True, "a session leader with a tty"

    cmd = f"cd {ROOT} && {sys.executable} -m cedanafs.cli restore process --path {tmp_path / 'sh'} --no-server"
    tmux.type("home", f"{cmd}; echo cedana-exit=$?")
    tmux.type("home", "echo typed-$SECRET")  # read by the restored bash, which holds the terminal now
    tmux.wait_text("home", "typed-4242")
    tmux.type("home", "exit 7")
    done = wait_for(lambda: [ln for ln in tmux.screen("home").splitlines() if ln.startswith("cedana-exit=")],
                    timeout=60, what="cedana to return")
    assert done == ["cedana-exit=7"], tmux.screen("home")
