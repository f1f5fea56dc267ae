"""Proof that a CRIU works here: dump and restore a small process holding TCP sockets.

`criu check` says the kernel has what CRIU needs, not that this CRIU can dump what real programs
hold: CRIU 4.1 passes it and still fails on every inet socket on kernels >= 6.16. So a tiny
Python process with a listening socket and an established connection to itself is dumped and
restored, and must then answer on both.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from ..errors import CedanaError
from .rpc import DumpOptions, RestoreOptions, dump, restore

log = logging.getLogger(__name__)

# Listens; holds a connection to itself; answers each new connection with "ok" once a byte went
# through the old one.
_PROGRAM = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
cli = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
open(sys.argv[1] + ".tmp", "w").write(str(srv.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    conn, _ = srv.accept()
    cli.sendall(b"x")
    conn.sendall(b"ok" if peer.recv(1) == b"x" else b"no")
    conn.close()
"""


def _wait_port(path: str, proc: subprocess.Popen, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError("the probe process did not start")
        time.sleep(0.02)
    with open(path) as f:
        return int(f.read())


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.recv(2)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tcp_probe(binary: str) -> str:
    """Dump and restore a process holding a listening and an established TCP socket.

    Returns "" when the restored process answers on both, else the reason it did not.
    """
    work = tempfile.mkdtemp(prefix="cedana-check-")
    images = os.path.join(work, "images")
    os.mkdir(images)
    port_file = os.path.join(work, "port")
    proc = subprocess.Popen([sys.executable, "-c", _PROGRAM, port_file], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    restored = 0
    try:
        port = _wait_port(port_file, proc)
        dump(binary, DumpOptions(images_dir=images, work_dir=work, log_file="dump.log", pid=proc.pid,
                                 tcp_established=True))
        proc.wait(timeout=10)
        restored = restore(binary, RestoreOptions(images_dir=images, work_dir=work, log_file="restore.log",
                                                  tcp_established=True))
        answer = _ask(port)
        return "" if answer == b"ok" else f"the restored process answered {answer!r}, not b'ok'"
    except (CedanaError, OSError, TimeoutError, subprocess.TimeoutExpired) as exc:
        log.debug("CRIU socket probe failed", exc_info=True)
        return str(exc)
    finally:
        _kill(proc.pid)
        proc.wait()
        if restored:
            _kill(restored)
        shutil.rmtree(work, ignore_errors=True)
