"""Restoring from a stream: CRIU's image-streamer protocol, serving side, and `criu restore --stream`.

With `--stream`, CRIU does not open image files: it connects to `<images-dir>/streamer-serve.sock`
and, for each image it wants, sends its name (u32 length + `img_streamer_request_entry`), hears
whether it exists (u32 length + `img_streamer_reply_entry`) and, if so, passes the write end of a
pipe (SCM_RIGHTS) that the server fills with the file's bytes and closes; CRIU reads the pages
images from these pipes straight into the restored memory, while the server is still producing
them. A server that cannot deliver a file closes its pipe early: CRIU sees the file end too soon
and fails the restore, so nothing half-restored ever runs.

`serve()` listens on that socket and answers one CRIU from a background thread, feeding each
file from the caller's `open_image(name)` in its own thread (CRIU asks for files of several
processes at once). `restore_streamed()` runs `criu restore --stream` against such a directory,
with the same options an RPC restore gets (lazy.restore_args). Only the criu command line
streams: swrk does not (CRIU's cr-service punts on it).
"""

from __future__ import annotations

import array
import errno
import fcntl
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .lazy import restore_args
from .rpc import RestoreOptions, run_cli

log = logging.getLogger(__name__)

SERVE_SOCKET = "streamer-serve.sock"
ACCEPT_TIMEOUT = 60.0  # a CRIU that never connects: stop listening after this long
PIPE_SIZE = 1 << 20  # the largest pipe an unprivileged writer may ask for by default
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_MAX_REQUEST = 1 << 16
_SUN_PATH_MAX = 107

# An image's bytes into a pipe's write end (the feeder closes nothing: serve() does).
Feeder = Callable[[int], None]
# The feeder of an image by its name in the images dir; None: no such image.
ImageSource = Callable[[str], "Feeder | None"]


class StreamError(OSError):
    """The streaming socket cannot be set up (path too long, directory gone...)."""


def socket_path(images_dir: str) -> str:
    path = os.path.join(images_dir, SERVE_SOCKET)
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise StreamError(errno.ENAMETOOLONG, f"{path}: too long for a unix socket")
    return path


def serve(images_dir: str, open_image: ImageSource, on_done: Callable[[], None] | None = None) -> None:
    """Listen on `<images_dir>/streamer-serve.sock` and serve one CRIU restore from a background
    thread; returns once CRIU can connect. `on_done` runs when that CRIU has hung up (or never came)."""
    path = socket_path(images_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)  # the images are the process's memory: only root connects
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    threading.Thread(target=_serve_one, args=(listener, path, open_image, on_done), name="criu-stream",
                     daemon=True).start()


def _serve_one(listener: socket.socket, path: str, open_image: ImageSource,
               on_done: Callable[[], None] | None) -> None:
    feeders: list[threading.Thread] = []
    try:
        listener.settimeout(ACCEPT_TIMEOUT)
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # socket.timeout included: nobody came
            log.info("no CRIU connected to %s: %s", path, exc)
            return
        finally:
            listener.close()
            _unlink(path)
        with conn:
            conn.settimeout(None)
            while (name := _request(conn)) is not None:
                feed = open_image(name)
                conn.sendall(_reply(feed is not None))
                if feed is None:
                    continue
                fd = _receive_fd(conn)
                thread = threading.Thread(target=_feed, args=(feed, fd, name), name=f"criu-stream {name}",
                                          daemon=True)
                thread.start()
                feeders.append(thread)
    except (OSError, ValueError) as exc:  # CRIU went away mid-request, or spoke nonsense
        log.info("image streaming through %s stopped: %s", path, exc)
    finally:
        for thread in feeders:
            thread.join()
        if on_done is not None:
            on_done()


def _feed(feed: Feeder, fd: int, name: str) -> None:
    try:
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe only costs more wake-ups
        feed(fd)
    except BrokenPipeError:
        log.info("CRIU stopped reading %s", name)
    except Exception as exc:  # noqa: BLE001 - closing the pipe early is how CRIU hears of it
        log.info("cannot stream %s to CRIU: %s", name, exc)
    finally:
        os.close(fd)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            if data:
                raise ValueError("CRIU hung up in the middle of a request")
            return None
        data += part
    return data


def _request(conn: socket.socket) -> str | None:
    """The next image name CRIU asks for; None once it hangs up."""
    head = _recv_exact(conn, 4)
    if head is None:
        return None
    (size,) = struct.unpack("<I", head)
    if size > _MAX_REQUEST:
        raise ValueError(f"a request of {size} bytes")
    body = _recv_exact(conn, size) or b""
    # img_streamer_request_entry: field 1 (filename), wire type 2: tag 0x0a, varint length, bytes.
    if not body or body[0] != 0x0A:
        raise ValueError("not an image request")
    length, pos, shift = 0, 1, 0
    while True:
        byte = body[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    name = body[pos:pos + length].decode()
    if os.sep in name or name in ("", ".", ".."):
        raise ValueError(f"CRIU asked for {name!r}")
    return name


def _reply(exists: bool) -> bytes:
    # img_streamer_reply_entry: field 1 (exists), varint: tag 0x08, 0 or 1.
    body = bytes([0x08, 1 if exists else 0])
    return struct.pack("<I", len(body)) + body


def _receive_fd(conn: socket.socket) -> int:
    fds = array.array("i")
    _, ancdata, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:fds.itemsize])
    if not fds:
        raise ValueError("CRIU sent no pipe")
    os.set_inheritable(fds[0], False)
    return fds[0]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def restore_streamed(binary: str, o: RestoreOptions) -> int:
    """`criu restore --stream` from the server listening in o.images_dir; returns the root pid.

    Detached, like an RPC restore: the restored tree is not our child. CRIU's log goes to
    o.work_dir (never the images dir, which holds only the socket)."""
    work = o.work_dir or o.images_dir
    pid_dir = tempfile.mkdtemp(prefix="cedana-restore-pid-")
    pid_file = os.path.join(pid_dir, "pid")
    try:
        cmd = [binary, "restore", "--stream", "-D", o.images_dir, "-W", work, "-o", o.log_file,
               f"-v{o.log_level}", "-d", "--pidfile", pid_file, *restore_args(o)]
        log.info("criu restore --stream dir=%s", o.images_dir)
        run_cli(cmd, "restore", os.path.join(work, o.log_file), pass_fds=tuple(m.fd for m in o.inherit))
        return int(Path(pid_file).read_text().strip())
    finally:
        shutil.rmtree(pid_dir, ignore_errors=True)
