"""Consoles of attachable jobs: a pty kept by a small keeper process, its output kept in the job's
log, relayed to whoever attaches.

`run process --attachable` starts the job with a pty's slave side as its stdin, stdout, stderr and
controlling terminal. The master side goes to a keeper (`python -m cedanafs.daemon.console`, run
in its own session, like conmon for containers), so the job's terminal outlives the daemon: a
daemon stop or restart neither hangs the job up nor loses its console. The keeper's relay copies
what the job writes into the job's log and a small scrollback, and to every attached client; what
a client sends goes to the job's terminal. The keeper listens on a private unix socket
(`consoles/<JID>.sock` beside the job database, root only); the daemon, having checked who asks,
passes it the caller's end of a socket pair (SCM_RIGHTS) with the terminal size. From then on
the stream is raw terminal bytes both ways, starting with the scrollback (so an attacher sees the
prompt it is expected to answer). Detaching is the client's business (it closes its end); the
job never notices. The keeper exits when the job's terminal closes (the job has ended).

The relay never waits for anyone: each client has an output queue of at most CLIENT_QUEUE bytes
(a client that stops reading, such as a suspended `cedana attach`, is dropped when it overflows),
and input the job does not read is dropped once the terminal's input queue is full, so neither
can stall the job's output.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import selectors
import socket
import struct
import sys
import termios
import threading

log = logging.getLogger(__name__)

SCROLLBACK = 16 << 10
CLIENT_QUEUE = 4 << 20
_READ = 65536


class Console:
    """One job's pty, its log and its attached clients; `close()` ends the relay."""

    def __init__(self, jid: str, log_fd: int | None, master: int | None = None):
        self.jid = jid
        self.master, self.slave = (master, None) if master is not None else os.openpty()
        for fd in (self.master, self.slave):
            if fd is not None:
                os.set_inheritable(fd, False)
        os.set_blocking(self.master, False)
        self._log_fd = log_fd
        self._lock = threading.Lock()
        self._clients: dict[int, bytearray] = {}  # fd -> output not yet taken by that client
        self._scrollback = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.master, selectors.EVENT_READ, "pty")
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pending: list[int] = []
        self._thread = threading.Thread(target=self._relay, name=f"console-{jid}", daemon=True)

    def start(self) -> None:
        """Once the job runs: our copy of the slave side is closed (so the job's exit shows), the relay starts."""
        self._close_slave()
        self._thread.start()

    def run(self) -> None:
        """The relay in this thread, until the job's terminal closes (the keeper's main loop)."""
        self._close_slave()
        self._relay()

    def serve(self, listener: socket.socket) -> None:
        """Take clients handed over on `listener`: a message {rows, cols} with the client's fd."""
        self._selector.register(listener, selectors.EVENT_READ, "listen")

    def _close_slave(self) -> None:
        if self.slave is not None:
            os.close(self.slave)
            self.slave = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def attach(self, fd: int, rows: int = 0, cols: int = 0) -> None:
        """Take over `fd` (a connected socket) as one more client of this console."""
        if rows > 0 and cols > 0:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        with self._lock:
            self._pending.append(fd)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # already woken
            pass

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                os.write(self._wake_w, b"q")
            except OSError:
                pass

    # --- the relay thread ---

    def _relay(self) -> None:
        try:
            while self._step():
                pass
        except Exception:  # noqa: BLE001 - a console's failure must not take the daemon down
            log.exception("console of job %s failed", self.jid)
        finally:
            self._shutdown()

    def _step(self) -> bool:
        for key, events in self._selector.select():
            what = key.data
            if what == "pty":
                if not self._from_job():
                    return False
            elif what == "wake":
                if b"q" in os.read(self._wake_r, 64):
                    return False
                self._add_pending()
            elif what == "listen":
                self._accept(key.fileobj)
            elif events & selectors.EVENT_WRITE and key.fd in self._clients:
                self._flush(key.fd)
            if what == "client" and events & selectors.EVENT_READ and key.fd in self._clients:
                self._from_client(key.fd)
        return True

    def _add_pending(self) -> None:
        with self._lock:
            new, self._pending = self._pending, []
        for fd in new:
            os.set_blocking(fd, False)
            self._clients[fd] = bytearray()
            self._selector.register(fd, selectors.EVENT_READ, "client")
            self._queue(fd, self._scrollback)

    def _accept(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            try:
                msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                size = json.loads(msg or b"{}")
            except (OSError, ValueError) as exc:
                log.warning("job %s: a bad hand-over on the console socket: %s", self.jid, exc)
                return
        for fd in fds:
            os.set_inheritable(fd, False)
            self.attach(fd, int(size.get("rows") or 0), int(size.get("cols") or 0))
            self._add_pending()

    def _from_job(self) -> bool:
        try:
            data = os.read(self.master, _READ)
        except BlockingIOError:
            return True
        except OSError:  # EIO: every slave side is closed, the job has ended
            data = b""
        if not data:
            log.info("job %s: its terminal closed", self.jid)
            return False
        if self._log_fd is not None:
            _write_log(self._log_fd, data)
        self._scrollback = (self._scrollback + data)[-SCROLLBACK:]
        for fd in list(self._clients):
            self._queue(fd, data)
        return True

    def _queue(self, fd: int, data: bytes) -> None:
        queue = self._clients[fd]
        if len(queue) + len(data) > CLIENT_QUEUE:
            log.warning("job %s: dropping a client that does not read its output", self.jid)
            self._drop(fd)
            return
        queue += data
        self._flush(fd)

    def _flush(self, fd: int) -> None:
        """Send what the client can take now; wait for it to be writable for the rest."""
        queue = self._clients[fd]
        try:
            while queue:
                del queue[:os.write(fd, queue)]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(fd)
            return
        self._selector.modify(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if queue else 0), "client")

    def _from_client(self, fd: int) -> None:
        try:
            data = os.read(fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        if not _send(self.master, data):
            log.debug("job %s: input dropped (the job does not read its terminal)", self.jid)

    def _drop(self, fd: int) -> None:
        if fd in self._clients:
            del self._clients[fd]
            self._selector.unregister(fd)
            os.close(fd)
            log.info("job %s: a client detached", self.jid)

    def _shutdown(self) -> None:
        for fd in list(self._clients):
            self._drop(fd)
        with self._lock:
            for fd in self._pending:
                os.close(fd)
            self._pending = []
        self._selector.close()
        for fd in (self.master, self._wake_r, self._wake_w, self._log_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _send(fd: int, data: bytes) -> bool:
    """Write all of `data` to a non-blocking fd now, or say it could not (full, or gone)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:  # BlockingIOError included: whoever does not keep up loses this
        return False
    return True


def _write_log(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:  # a full disk must not stop the relay
        log.warning("cannot write to the job's log: %s", exc)


# --- the keeper process and the daemon's side of it ---------------------------------------------

def socket_path(consoles_dir: str, jid: str) -> str:
    return os.path.join(consoles_dir, f"{jid}.sock")


def start_keeper(consoles_dir: str, jid: str, master: int, log_fd: int | None, timeout: float = 10.0) -> str:
    """Run a keeper for the pty `master` in its own session (it outlives the daemon); its socket path."""
    import subprocess
    import time

    os.makedirs(consoles_dir, mode=0o700, exist_ok=True)
    path = socket_path(consoles_dir, jid)
    if os.path.lexists(path):
        os.unlink(path)  # a keeper of an earlier job of this name, gone
    fds = [master] + ([log_fd] if log_fd is not None else [])
    argv = [sys.executable, "-m", "cedanafs.daemon.console", jid, path, str(master), str(log_fd or -1)]
    # `setsid -f`: a new session, and not our child (nobody would reap it after a daemon restart).
    subprocess.run(["setsid", "-f", *argv], pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=30)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise OSError(f"the console keeper of job {jid} did not start")
        time.sleep(0.02)
    return path


def hand_over(consoles_dir: str, jid: str, client_fd: int, rows: int = 0, cols: int = 0) -> bool:
    """Give the keeper of job `jid` one more client; False when the job has no console."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        try:
            sock.connect(socket_path(consoles_dir, jid))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        socket.send_fds(sock, [json.dumps({"rows": rows, "cols": cols}).encode()], [client_fd])
    return True


def has_console(consoles_dir: str, jid: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path(consoles_dir, jid))
        except OSError:
            return False
    return True


def _keep(jid: str, path: str, master: int, log_fd: int) -> None:
    """The keeper's life: serve the console of `jid` on `path` until the job's terminal closes."""
    console = Console(jid, log_fd if log_fd >= 0 else None, master=master)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(16)
    console.serve(listener)
    try:
        console.run()
    finally:
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


if __name__ == "__main__":
    _keep(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
