"""Linux file calls the os module lacks (syncfs, sync_file_range), through libc, and a file whose
write-back starts as it is written.

Layer 0, with no imports beyond the standard library, so a dump command loads it cheaply.
"""

from __future__ import annotations

import ctypes
import os
from typing import BinaryIO

SYNC_FILE_RANGE_WRITE = 2


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
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
