"""The synchronous client of the daemon's control socket, used by the CLI.

One connection per call: send the request (with any file descriptors), read one response line.
A socket nobody listens on is DaemonUnavailable, so callers can fall back to in-process work.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Sequence

from ..errors import DaemonUnavailable, PermissionDenied
from . import protocol


def connect(address: str, timeout: float | None = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise DaemonUnavailable(f"no cedana daemon is listening on {address}"
                                " (start it with `cedana daemon start`)") from None
    except PermissionError:
        sock.close()
        raise PermissionDenied(f"not allowed to connect to the cedana daemon at {address}") from None
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(f"cannot reach the cedana daemon at {address}: {exc.strerror or exc}") from None
    return sock


def is_listening(address: str) -> bool:
    """Whether a daemon answers on `address` (a stale socket file does not count)."""
    try:
        connect(address, timeout=2.0).close()
    except (DaemonUnavailable, PermissionDenied):
        return False
    return True


def call(address: str, method: str, params: dict | None = None, *, fds: Sequence[int] = (),
         timeout: float | None = 600.0) -> Any:
    """Send one request and return its result; a daemon-side error is raised here as the same CedanaError."""
    with connect(address) as sock:
        sock.settimeout(timeout)
        data = protocol.request(method, params)
        if fds:
            socket.send_fds(sock, [data], list(fds))
        else:
            sock.sendall(data)
        reply = protocol.decode(_read_line(sock, address))
    if not reply.get("ok"):
        protocol.raise_error(reply.get("error") or {})
    return reply.get("result")


def _read_line(sock: socket.socket, address: str) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise DaemonUnavailable(f"the cedana daemon at {address} did not answer in time") from None
        except OSError as exc:
            if exc.errno == errno.ECONNRESET:
                chunk = b""
            else:
                raise
        if not chunk:
            raise DaemonUnavailable(f"the cedana daemon at {address} closed the connection without answering"
                                    " (see its log)")
        buf += chunk
        if len(buf) > protocol.MAX_MESSAGE * 16:
            raise protocol.ProtocolError("the daemon's answer is too large")
    return buf
