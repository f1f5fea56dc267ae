"""Local-directory backend: one file per object under a root directory.

Writes go to a temporary file in <root>/.tmp/ (same filesystem), are fsynced, then renamed over
the final name and the directory fsynced, so readers see the old or the whole new object and a
crash leaves at most a stray temp file (which list() never shows).

put_unsynced() (chunks) skips both fsyncs and only starts the write-back; sync() then flushes
the whole store filesystem once (syncfs), before the manifest that references them is written:
two fsyncs per chunk cost more than the rest of the ingest on this kind of disk. A conditional
create links the temporary file to the final name instead, which fails if the name exists.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from typing import BinaryIO, Iterator

from ..errors import BackendError, NoSuchObject, ObjectExists
from .base import AtomicWriter, Backend, ObjectInfo, check_key

TMP_DIR = ".tmp"


class LocalBackend(Backend):
    """Objects as files below `root`."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        try:
            os.makedirs(os.path.join(self.root, TMP_DIR), exist_ok=True)
        except OSError as exc:
            raise BackendError(f"{self.url}: cannot create the store directory: {exc.strerror}") from None

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _fail(self, key: str, exc: OSError) -> BackendError:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
            return NoSuchObject(f"{self.url}/{key}: no such object")
        return BackendError(f"{self.url}/{key}: {exc.strerror or exc}")

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except OSError as exc:
            raise self._fail(key, exc) from None

    def get_into(self, key: str, buf: bytearray) -> int | None:
        """Read the object into `buf` (no new memory per read); its size, or None if it does not
        fit (get() it then)."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail(key, exc) from None
        try:
            size = os.fstat(fd).st_size
            if size > len(buf):
                return None
            view, got = memoryview(buf), 0
            while got < size:
                n = os.readv(fd, [view[got:size]])
                if not n:
                    break
                got += n
            return got
        except OSError as exc:
            raise self._fail(key, exc) from None
        finally:
            os.close(fd)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except OSError as exc:
            raise self._fail(key, exc) from None

    def put(self, key: str, data: bytes) -> None:
        with self.open_write(key) as f:
            f.write(data)

    def put_unsynced(self, key: str, data: bytes) -> None:
        final = self._path(key)
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.join(self.root, TMP_DIR), prefix="put-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    _start_writeback(f.fileno())
                try:
                    os.rename(tmp, final)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    os.rename(tmp, final)
            except BaseException:
                _unlink_quietly(tmp)
                raise
        except OSError as exc:
            raise self._fail(key, exc) from None

    def sync(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _LIBC is None or _LIBC.syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)
    def create(self, key: str, data: bytes) -> None:
        final = self._path(key)
        writer = _LocalWriter(self, key, final, exclusive=True)
        with writer:
            writer.write(data)

    def list(self, prefix: str = "") -> Iterator[str]:
        start = self.root
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if head:
            start = os.path.join(self.root, *head.split("/"))
        for dirpath, dirnames, filenames in os.walk(start):
            rel = os.path.relpath(dirpath, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
                rel = ""
            for name in filenames:
                key = f"{rel}/{name}" if rel else name
                key = key.replace(os.sep, "/")
                if key.startswith(prefix):
                    yield key

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(key, exc) from None

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise self._fail(key, exc) from None
        return ObjectInfo(size=st.st_size, mtime=st.st_mtime)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._fail(key, exc) from None

    def open_write(self, key: str) -> AtomicWriter:
        return _LocalWriter(self, key, self._path(key))


class _LocalWriter(AtomicWriter):
    def __init__(self, backend: LocalBackend, key: str, final: str, exclusive: bool = False):
        super().__init__(key)
        self._backend = backend
        self._final = final
        self._exclusive = exclusive  # link(2), not rename(2): EEXIST instead of replacing
        fd, self._tmp = tempfile.mkstemp(dir=os.path.join(backend.root, TMP_DIR), prefix="put-")
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            parent = os.path.dirname(self._final)
            os.makedirs(parent, exist_ok=True)
            if self._exclusive:
                os.link(self._tmp, self._final)
                os.unlink(self._tmp)
            else:
                os.rename(self._tmp, self._final)
            _fsync_dir(parent)
        except FileExistsError:
            raise ObjectExists(f"{self._backend.url}/{self.key}: already exists") from None
        except OSError as exc:
            raise self._backend._fail(self.key, exc) from None

    def _discard(self) -> None:
        self._file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int) -> None:
    """Start writing the file back now (no wait), so the sync at commit has little left to do."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
