"""Linux file calls the os module lacks (syncfs, sync_file_range, fallocate's hole punching,
glibc's mallopt), through libc, a file whose write-back starts as it is written, and a file
written around the page cache (O_DIRECT).

Layer 0, with no imports beyond the standard library, so a dump command loads it cheaply.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import BinaryIO

SYNC_FILE_RANGE_WRITE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        if hasattr(libc, "mallopt"):  # glibc's
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def syncfs(fd: int) -> None:
    """Flush the filesystem holding fd (every filesystem, where syncfs is missing)."""
    if _LIBC is None or _LIBC.syncfs(fd) != 0:
        os.sync()


def start_writeback(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Start writing a range of the file back now, without waiting (nbytes 0: to its end), so a
    later fsync has little left to do."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


def punch_hole(fd: int, offset: int, nbytes: int) -> bool:
    """Free a range of a file's blocks (it reads as zeros after); False where that is not possible."""
    if _LIBC is None:
        return False
    return _LIBC.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, nbytes) == 0


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_blocks(largest: int = 8 << 20, kept: int = 32 << 20) -> None:
    """Let glibc keep the large blocks a streaming copy frees and allocates again (tarfile's 1 MiB
    reads, a compressor's outputs) instead of giving each back to the kernel and faulting its
    pages in anew: blocks up to `largest` come from the heap, and up to `kept` bytes of free heap
    stay mapped. Measured: unpacking a 1 GiB job's gzip archive, 1.5 s -> 0.9-1.0 s (a fifth of
    it was page faults). Called by the commands that move archive bytes: the process decides,
    not a library. No-op where libc is not glibc."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return
    _LIBC.mallopt(M_MMAP_THRESHOLD, largest)
    _LIBC.mallopt(M_TRIM_THRESHOLD, kept)


class WritingBack:
    """A file written from start to end whose write-back is started every `every` bytes: the fsync
    that makes it durable then waits for the last few MiB, not for all of it."""

    def __init__(self, f: BinaryIO, every: int = 32 << 20):
        self._f = f
        self._every = every
        self._written = 0
        self._started = 0

    def write(self, data) -> int:
        n = self._f.write(data)
        self._written += n
        if self._written - self._started >= self._every:
            self._f.flush()
            start_writeback(self._f.fileno(), self._started, self._written - self._started)
            self._started = self._written
        return n

    def flush(self) -> None:
        self._f.flush()


class DirectWriter:
    """A file written from start to end around the page cache (O_DIRECT), by a thread of its own.

    On this kind of machine copying a large file into the page cache and writing it back costs
    more CPU than producing it (~0.9 GB/s, against the disk's ~1 GB/s direct). write() only
    keeps the data (a caller must not change what it wrote until close()); the thread gathers it
    into page-aligned buffers and writes each one full. The last partial page goes through the
    page cache (O_DIRECT cleared), as does everything where the filesystem refuses O_DIRECT.
    close() writes what is left and waits (the caller still fsyncs: the file's size and blocks
    are metadata); an error of the thread is raised by the next write() or close(). abort()
    stops the thread, writing nothing more.
    """

    def __init__(self, fd: int, buffer: int = 4 << 20):
        self._fd = fd
        self.direct = _set_direct(fd, True)
        self._size = buffer
        self._kept: list = []
        self._kept_bytes = 0
        self._todo: queue.Queue[list | None] = queue.Queue(maxsize=2)  # what write() waits on
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        self._kept.append(data)
        self._kept_bytes += n
        if self._kept_bytes >= self._size:
            self._hand_on()
        return n

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def flush(self) -> None:
        """Nothing to flush before close(): the thread writes whole buffers as they fill."""

    def _hand_on(self) -> None:
        self._todo.put(self._kept)
        self._kept = []
        self._kept_bytes = 0

    def close(self) -> None:
        """Write everything (the last partial page through the page cache) and wait."""
        self._hand_on()
        self._stop()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._kept = []
        self._abandoned = True
        self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def _run(self) -> None:
        buf = mmap.mmap(-1, self._size)  # anonymous mappings are page-aligned
        used = 0
        while (parts := self._todo.get()) is not None:
            if self._error is not None or self._abandoned:
                continue  # only drained now: write() or close() raises the error
            try:
                used = self._gather(buf, used, parts)
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's next call
                self._error = exc
        if self._error is not None or self._abandoned:
            return
        try:
            whole = used - used % mmap.PAGESIZE
            if whole:
                self._write(memoryview(buf)[:whole])
            if used > whole:
                _set_direct(self._fd, False)
                _write_all(self._fd, memoryview(buf)[whole:used])
        except BaseException as exc:  # noqa: BLE001 - raised by close()
            self._error = exc

    def _gather(self, buf: mmap.mmap, used: int, parts: list) -> int:
        """Copy parts into buf after its first `used` bytes, writing it each time it is full."""
        for part in parts:
            view = memoryview(part).cast("B")
            while view:
                take = min(self._size - used, len(view))
                buf[used:used + take] = view[:take]
                used += take
                view = view[take:]
                if used == self._size:
                    self._write(memoryview(buf))
                    used = 0
        return used

    def _write(self, view: memoryview) -> None:
        try:
            _write_all(self._fd, view)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self.direct:
                raise
            # The filesystem took O_DIRECT but not this write (its blocks are larger than a page).
            # O_DIRECT writes whole blocks or fail before writing, so the offset is where it was.
            self.direct = _set_direct(self._fd, False) and False
            _write_all(self._fd, view)

    def __enter__(self) -> "DirectWriter":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _set_direct(fd: int, on: bool) -> bool:
    """O_DIRECT on or off for fd; whether it is on now (False where the filesystem refuses it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return on


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]
