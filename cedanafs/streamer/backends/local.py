"""Local-directory backend: one file per object under a root directory.

Writes go to a temporary file in <root>/.tmp/ (same filesystem), are fsynced, then renamed over
the final name and the directory fsynced, so readers see the old or the whole new object and a
crash leaves at most a stray temp file (which list() never shows, and which opening the store
removes once it is an hour old).

put_unsynced() (chunks) skips both fsyncs and only starts the write-back; sync() then fsyncs
the files written so since the last sync, and their directories, before the manifest that
references them is written: two fsyncs per chunk as it is written cost more than the rest of the
ingest on this kind of disk, while fsyncs at the end find the data already on the disk and share
one journal commit (~0.03 s for 700 chunks). Not syncfs: that would also wait for every other
writer's dirty data on the filesystem. A chunk comes as parts (its header byte and a view of its
bytes) written with one writev. put_many() replaces a batch of objects with one sync before the
renames (the compression after a commit). A conditional create links the temporary file to the
final name instead, which fails if the name exists.
"""

from __future__ import annotations

import errno
import itertools
import os
import tempfile
import threading
import time
from typing import BinaryIO, Iterator, Sequence

from ...fsio import start_writeback, syncfs
from ..errors import BackendError, NoSuchObject, ObjectExists
from .base import AtomicWriter, Backend, Buffer, ObjectInfo, check_key

TMP_DIR = ".tmp"
SYNCFS_ABOVE = 20000  # objects awaiting a sync beyond which one syncfs is cheaper than their fsyncs


class LocalBackend(Backend):
    """Objects as files below `root`."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self._pending: set[str] = set()  # files and directories to fsync at the next sync()
        self._pending_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        try:
            os.makedirs(os.path.join(self.root, TMP_DIR), exist_ok=True)
        except OSError as exc:
            raise BackendError(f"{self.url}: cannot create the store directory: {exc.strerror}") from None
        _remove_stale_temps(os.path.join(self.root, TMP_DIR))

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
        self.put_parts_unsynced(key, (data,))

    def put_parts_unsynced(self, key: str, parts: Sequence[Buffer]) -> None:
        final = self._path(key)
        tmp = self._write_temp(key, parts)
        self._rename_into_place(key, tmp, final)
        self._unsynced([final, os.path.dirname(final)])

    def _unsynced(self, paths: Sequence[str]) -> None:
        with self._pending_lock:
            self._pending.update(paths)

    def put_many(self, items: Sequence[tuple[str, Sequence[Buffer]]]) -> None:
        """Every object written to a temporary file, one sync, then each renamed over its name:
        a crash leaves each name with its old object or its whole new one."""
        written: list[tuple[str, str, str]] = []
        try:
            for key, parts in items:
                written.append((key, self._write_temp(key, parts), self._path(key)))
            self._unsynced([tmp for _, tmp, _ in written])
            self.sync()
        except BaseException:
            for _, tmp, _ in written:
                _unlink_quietly(tmp)
            raise
        for key, tmp, final in written:
            self._rename_into_place(key, tmp, final)
        self._unsynced([os.path.dirname(final) for _, _, final in written])
        self.sync()

    def _write_temp(self, key: str, parts: Sequence[Buffer]) -> str:
        """A new temporary file holding `parts` (one writev, no copy), write-back started."""
        tmp = os.path.join(self.root, TMP_DIR, f"put-{_TOKEN}-{threading.get_native_id()}-{next(_serial)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._fail(key, exc) from None
        try:
            _write_all(fd, parts)
            start_writeback(fd)
        except BaseException as exc:
            os.close(fd)
            _unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise self._fail(key, exc) from None
            raise
        os.close(fd)
        return tmp

    def _rename_into_place(self, key: str, tmp: str, final: str) -> None:
        try:
            try:
                os.rename(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                self._unsynced(_ancestors(os.path.dirname(final), self.root))  # the new directories' entries
                os.rename(tmp, final)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise self._fail(key, exc) from None

    def sync(self) -> None:
        """Everything put unsynced so far is durable when this returns."""
        # Held across the fsyncs, unlike every other lock here: a sync that finds nothing left
        # to do must not return while another one is still making its objects durable.
        with self._sync_lock:
            with self._pending_lock:
                paths, self._pending = self._pending, set()
            try:
                if len(paths) > SYNCFS_ABOVE:  # fewer calls, whatever else it waits for
                    _syncfs(self.root)
                    return
                for path in sorted(paths, key=len, reverse=True):  # files, then their directories
                    _fsync_path(path)
            except OSError as exc:
                with self._pending_lock:
                    self._pending.update(paths)
                raise BackendError(f"{self.url}: cannot make objects durable: {exc.strerror or exc}") from None

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


_serial = itertools.count()
_TOKEN = os.urandom(6).hex()  # this process's temporary names: never a dead process's leftovers


def _write_all(fd: int, parts: Sequence[Buffer]) -> None:
    """All of `parts` to fd, in order: one writev, more only if the kernel takes less."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


STALE_TEMP = 3600.0  # a temporary object this old belongs to a writer that died (a put takes seconds)


def _remove_stale_temps(tmp_dir: str) -> None:
    """Temporary objects left by writers that were killed mid-put (never part of the store)."""
    cutoff = time.time() - STALE_TEMP
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return
    for name in names:
        path = os.path.join(tmp_dir, name)
        try:
            if name.startswith("put-") and os.lstat(path).st_mtime < cutoff:
                os.unlink(path)
        except OSError:
            pass


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


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # deleted since (a GC, or a temporary file renamed): nothing of it to keep
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(root: str) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def _ancestors(directory: str, root: str) -> list[str]:
    """`directory` and the directories above it up to `root` (whose entries a new one adds)."""
    found = [directory]
    while directory != root and directory.startswith(root + os.sep):
        directory = os.path.dirname(directory)
        found.append(directory)
    return found
