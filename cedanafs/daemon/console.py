"""Consoles of attachable jobs: a pty the daemon owns, its output kept in the job's log, relayed to
whoever attaches.

`run process --attachable` starts the job with a pty's slave side as its stdin, stdout, stderr and
controlling terminal. The daemon keeps the master side; one relay thread per console copies what
the job writes into the job's log and a small scrollback, and to every attached client; what a
client sends goes to the job's terminal. A client is the caller's connection to the control socket,
the caller's end of a socket pair it sent with `job.attach`; the stream is raw terminal bytes both
ways, starting with the scrollback (so an attacher sees the prompt it is expected to answer).
Detaching is the client's business (it closes its connection); the job never notices.

The relay never waits for anyone: each client has an output queue of at most CLIENT_QUEUE bytes
(a client that stops reading, such as a suspended `cedana attach`, is dropped when it overflows),
and input the job does not read is dropped once the terminal's input queue is full, so neither
can stall the job's output.
"""

from __future__ import annotations

import fcntl
import logging
import os
import selectors
import struct
import termios
import threading

log = logging.getLogger(__name__)

SCROLLBACK = 16 << 10
CLIENT_QUEUE = 4 << 20
_READ = 65536


class Console:
    """One job's pty, its log and its attached clients; `close()` ends the relay."""

    def __init__(self, jid: str, log_fd: int | None):
        self.jid = jid
        self.master, self.slave = os.openpty()
        for fd in (self.master, self.slave):
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
        """Once the job runs: the daemon's copy of the slave side is closed, so the job's exit shows."""
        os.close(self.slave)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def attach(self, fd: int, rows: int = 0, cols: int = 0) -> None:
        """Take over `fd` (a connected socket) as one more client of this console."""
        if rows > 0 and cols > 0:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        with self._lock:
            self._pending.append(fd)
        os.write(self._wake_w, b"x")

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
