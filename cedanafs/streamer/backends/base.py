"""The backend interface: a dumb key/value object store with typed errors.

Keys are '/'-separated strings relative to the backend's root (e.g. 'chunks/ab/ab12...').
Compression, chunking, dedup and caching live above this interface (chunkstore.py, files.py).
Implementations are thread-safe.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence, Union

Buffer = Union[bytes, bytearray, memoryview]

from cedanafs.errors import NoSuchObject

from ..errors import CorruptObject


@dataclass(frozen=True)
class ObjectInfo:
    """What stat() tells about one object: its size in bytes and its modification time (epoch s)."""

    size: int
    mtime: float


def check_key(key: str) -> str:
    """Reject keys that could escape the root or collide with directory names."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class Backend(ABC):
    """A flat object store addressed by key. `url` names it in messages."""

    url: str = ""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; NoSuchObject if absent."""

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """length bytes from offset (fewer at the end of the object)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store the object atomically: readers see the old object or the whole new one."""

    def put_unsynced(self, key: str, data: bytes) -> None:
        """Like put(), but the object need only be durable after the next sync() (chunks: many
        puts, one sync before the manifest that references them is committed)."""
        self.put(key, data)

    def put_parts_unsynced(self, key: str, parts: Sequence[Buffer]) -> None:
        """put_unsynced() of the object made of `parts` in order (a local store writes them with
        one writev, never joining them: a chunk's header and its body, a view of a read buffer)."""
        self.put_unsynced(key, b"".join(parts))

    def put_many(self, items: Sequence[tuple[str, Sequence[Buffer]]]) -> None:
        """Several objects, each put() atomically and durably by the time this returns (a local
        store syncs once for all of them, then renames each into place)."""
        for key, parts in items:
            self.put(key, b"".join(parts))

    def sync(self) -> None:
        """Make every put_unsynced() object durable (object stores: already are)."""

    # -- segmented objects: pack objects (streamer/packs.py) ---------------------------------
    def seal_segment(self, segment_key: str, data: Buffer) -> Buffer:
        """What to store of one segment of an object put by put_segmented(): `data` itself here;
        sealed under `segment_key` by an encrypted backend, so that it can be read on its own."""
        return data

    def open_segment(self, segment_key: str, stored: bytes) -> bytes:
        """The bytes seal_segment() was given, from what it returned."""
        return stored

    def put_segmented(self, key: str, segments: Sequence[Buffer]) -> None:
        """put() of the object made of `segments` (each from seal_segment()) in order."""
        self.put(key, b"".join(segments))

    def get_segment(self, key: str, segment_key: str, offset: int, length: int) -> bytes:
        """One segment of an object put by put_segmented(), opened; CorruptObject if the object
        ends before it, NoSuchObject if there is no such object."""
        data = self.get_range(key, offset, length)
        if len(data) != length:
            raise CorruptObject(f"{self.url}: object {key} ends before its segment at {offset}+{length}")
        return data

    @abstractmethod
    def create(self, key: str, data: bytes) -> None:
        """Store the object atomically only if no object has the key (ObjectExists otherwise): a
        conditional create, what a commit needs so that it never replaces another."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with prefix, relative to the root, in no guaranteed order."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime; NoSuchObject if absent."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NoSuchObject:
            return False
        return True

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; NoSuchObject if absent."""

    @abstractmethod
    def open_write(self, key: str) -> "AtomicWriter":
        """A writable stream; the object appears, whole, only on close(). abort() or an exception
        inside a `with` block leaves no object."""

    def close(self) -> None:
        """Release clients and sessions (optional)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


class AtomicWriter(io.RawIOBase):
    """Base of open_write() results: write(), close() commits, abort() discards.

    Used as a context manager, an exception in the block aborts instead of committing; garbage
    collection of an unclosed writer also aborts (never a partial object by accident).
    """

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        if self._done:
            raise ValueError(f"write to closed writer for {self.key}")
        self._write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self._done:
            self._done = True
            try:
                self._commit()
            except BaseException:
                self._discard()
                raise
        super().close()

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._discard()
        super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            try:
                self.abort()
            except Exception:  # noqa: BLE001 - nothing to report to during finalization
                pass

    @abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...


class BufferedWriter(AtomicWriter):
    """An AtomicWriter for backends without streaming puts: buffers the bytes, put() on close."""

    def __init__(self, backend: Backend, key: str):
        super().__init__(key)
        self._backend = backend
        self._buf = io.BytesIO()

    def _write(self, data: bytes) -> None:
        self._buf.write(data)

    def _commit(self) -> None:
        self._backend.put(self.key, self._buf.getvalue())

    def _discard(self) -> None:
        self._buf = io.BytesIO()
