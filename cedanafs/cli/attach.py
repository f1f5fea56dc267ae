"""Getting back to a job: `attach <PID>`, `job attach <JID>` (the terminal of a job started with
`run process --attachable`, relayed by the daemon) and `job logs <JID> [-f]`.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time

import click

from .base import Context, _daemon, cli, handle_errors, pass_ctx
from .jobs import job_group

DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, as docker attach
QUIET_AFTER_EOF = 1.0  # seconds without output after the end of input before detaching
_ALIVE = ("running", "sleep", "zombie")


@cli.command("attach")
@click.argument("pid", type=int)
@pass_ctx
@handle_errors
def attach_pid(ctx: Context, pid: int) -> None:
    """Attach this terminal to the attachable job whose process is PID (detach: Ctrl-P Ctrl-Q)."""
    sys.exit(_attach(ctx, {"pid": pid}))


@job_group.command("attach")
@click.argument("jid")
@pass_ctx
@handle_errors
def job_attach(ctx: Context, jid: str) -> None:
    """Attach this terminal to job JID, started with `run process --attachable` (detach: Ctrl-P Ctrl-Q)."""
    sys.exit(_attach(ctx, {"jid": jid}))


def _attach(ctx: Context, params: dict) -> int:
    ours, theirs = socket.socketpair()
    with ours:
        try:
            size = os.get_terminal_size(sys.stdout.fileno()) if sys.stdout.isatty() else None
            params |= {"rows": size.lines, "cols": size.columns} if size else {}
            result = _daemon(ctx, "job.attach", params, fds=(theirs.fileno(),), timeout=30)
        finally:
            theirs.close()
        jid = result["job"]
        detached = _Relay(ours).run(f"[attached to job {jid}; detach with Ctrl-P Ctrl-Q]\r\n")
    if detached:
        click.echo(f"\r\n[detached from job {jid}]", err=True)
        return 0
    state = _daemon(ctx, "job.wait", {"jid": jid}, timeout=60)  # its terminal closed: it has ended
    code = state["exit_code"] if state.get("exit_code") is not None else 0
    click.echo(f"\r\n[job {jid} ended, exit code {code}]", err=True)
    return code


class _Relay:
    """This terminal <-> the job's terminal, in raw mode, until the detach keys, the job's end, or the end
    of input followed by a second of quiet (so `echo cmd | cedana attach PID` shows the answer)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.held = b""  # a Ctrl-P that may start the detach sequence

    def run(self, banner: str) -> bool:
        stdin = sys.stdin.fileno()
        saved = _raw(stdin)
        try:
            _write(sys.stderr.fileno(), banner.encode())
            return self._loop(stdin)
        finally:
            if saved is not None:
                import termios

                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)

    def _loop(self, stdin: int) -> bool:
        inputs = [stdin, self.sock]
        while True:
            ready, _, _ = select.select(inputs, [], [], None if stdin in inputs else QUIET_AFTER_EOF)
            if not ready:
                return True  # input ended and the job has said what it had to say
            if self.sock in ready:
                data = self.sock.recv(65536)
                if not data:
                    return False
                _write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:  # end of input (a script's pipe): let the answer come, then detach
                    inputs.remove(stdin)
                    continue
                data, detach = self._keys(data)
                if data:
                    self.sock.sendall(data)
                if detach:
                    return True

    def _keys(self, data: bytes) -> tuple[bytes, bool]:
        data, self.held = self.held + data, b""
        at = data.find(DETACH_KEYS)
        if at >= 0:
            return data[:at], True
        if data.endswith(DETACH_KEYS[:1]):
            data, self.held = data[:-1], DETACH_KEYS[:1]
        return data, False


def _raw(fd: int) -> list | None:
    if not os.isatty(fd):
        return None
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)  # keep what was typed ahead: it is for the job
    return saved


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@job_group.command("logs")
@click.argument("jid")
@click.option("--follow", "-f", is_flag=True, help="Keep printing what the job writes, until it ends (or Ctrl-C).")
@pass_ctx
@handle_errors
def job_logs(ctx: Context, jid: str, follow: bool) -> None:
    """Print the output of job JID (its log file)."""
    from ..errors import NotFound

    info = _daemon(ctx, "job.inspect", {"jid": jid}, timeout=30)
    if not info.get("log"):
        raise NotFound(f"job {jid} has no log file (its output was not redirected by cedana)")
    try:
        f = open(info["log"], "rb")
    except FileNotFoundError:
        raise NotFound(f"the log of job {jid}, {info['log']}, does not exist (any more)") from None
    with f:
        _copy(f)
        while follow:
            if _copy(f):
                continue
            if _daemon(ctx, "job.inspect", {"jid": jid}, timeout=30)["status"] not in _ALIVE:
                _copy(f)  # what it wrote just before it ended
                return
            time.sleep(0.3)


def _copy(f) -> int:
    data = f.read()
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return len(data)
