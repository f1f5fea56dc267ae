"""The control socket: accept connections, read one request from each, answer it, close.

Every connection is a task in the server's nursery. Who calls comes from the socket's peer
credentials (SO_PEERCRED), never from the request. File descriptors sent with the request
(SCM_RIGHTS) are handed to the handler and closed once it returns.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import struct
from typing import Awaitable, Callable

import trio

from ..app.jobs import Caller
from ..errors import CedanaError
from . import protocol

log = logging.getLogger(__name__)

Dispatch = Callable[[str, Caller, dict, list[int]], Awaitable[object]]
READ_TIMEOUT = 30.0


async def bind(address: str) -> trio.socket.SocketType:
    """A listening unix socket at `address` that every local user may connect to (access is by uid)."""
    os.makedirs(os.path.dirname(address) or ".", exist_ok=True)
    if os.path.lexists(address):
        os.unlink(address)  # the caller holds the daemon lock: this is a dead daemon's socket
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(address)
    os.chmod(address, 0o666)
    sock.listen(128)
    return sock


async def serve(listener: trio.socket.SocketType, dispatch: Dispatch) -> None:
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(_connection, conn, dispatch)


def peer(conn: trio.socket.SocketType) -> Caller:
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Caller(uid=uid, gid=gid, pid=pid)


async def _connection(conn: trio.socket.SocketType, dispatch: Dispatch) -> None:
    fds: list[int] = []
    with conn:
        try:
            caller = peer(conn)
            with trio.fail_after(READ_TIMEOUT):
                line, fds = await _read_request(conn)
            reply = await _answer_unless_hung_up(conn, line, caller, fds, dispatch)
            if reply is not None:
                await _send_all(conn, reply)
        except (trio.TooSlowError, OSError) as exc:
            log.debug("connection dropped: %s", exc)
        finally:
            for fd in fds:
                _close(fd)


async def _answer_unless_hung_up(conn: trio.socket.SocketType, line: bytes, caller: Caller, fds: list[int],
                                 dispatch: Dispatch) -> bytes | None:
    """Answer, but stop waiting when the caller hangs up (e.g. `run --attach` killed while it waits).

    Work already on a thread (a dump, a restore) still runs to its end: only the waiting stops.
    """
    reply = None
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            try:
                await conn.recv(1)  # a client sends nothing after its request: this returns at hang-up
            except OSError:
                pass
            log.debug("caller pid %d hung up", caller.pid)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        reply = await _answer(line, caller, fds, dispatch)
        nursery.cancel_scope.cancel()
    return reply


async def _answer(line: bytes, caller: Caller, fds: list[int], dispatch: Dispatch) -> bytes:
    try:
        req = protocol.decode(line)
        method = str(req.get("method", ""))
        params = req.get("params") or {}
        if not isinstance(params, dict):
            raise protocol.ProtocolError("malformed request: params must be an object")
        log.debug("request %s from uid %d pid %d", method, caller.uid, caller.pid)
        return protocol.ok(await dispatch(method, caller, params, fds))
    except CedanaError as err:
        return protocol.error(err)
    except Exception as exc:  # noqa: BLE001 - one request's bug must not take the daemon down
        log.exception("request failed")
        return protocol.error(CedanaError(f"internal error in the daemon: {type(exc).__name__}: {exc}"
                                          " (see the daemon's log)"))


async def _read_request(conn: trio.socket.SocketType) -> tuple[bytes, list[int]]:
    buf, fds = b"", []
    space = socket.CMSG_SPACE(protocol.MAX_FDS * array.array("i").itemsize)
    while not buf.endswith(b"\n"):
        data, ancdata, _flags, _addr = await conn.recvmsg(65536, space, socket.MSG_CMSG_CLOEXEC)
        fds += _fds_of(ancdata)
        if not data:
            break
        buf += data
        if len(buf) > protocol.MAX_MESSAGE:
            raise protocol.ProtocolError("request too large")
    return buf, fds


def _fds_of(ancdata: list) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[: len(payload) - len(payload) % arr.itemsize])
            fds += list(arr)
    return fds


async def _send_all(conn: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await conn.send(view)
        view = view[sent:]


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
