"""The bytes of one file being written into a pending checkpoint of the mount.

While writes arrive in order (offset == size, what CRIU, cp and rsync do) they go straight into
a streaming writer of the store: chunked, hashed, compressed and uploaded as they come, with the
writer bounding the memory in flight. Anything else (a write behind the end, a seek back, a
truncate to a non-zero size, a read before the file is finished) turns the file into a local
spill file, which is chunked into the store once, when the file is finished. No state here
survives a crash on purpose: a pending checkpoint is discarded if the mount dies.

Thread-safe: each file has its own lock, so writes to different files run in parallel.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Callable, Protocol

from cedanafs.errors import StoreError
from cedanafs.types import FileContent

log = logging.getLogger(__name__)

_COPY_BLOCK = 1 << 20
EMPTY = FileContent(size=0, inline=b"")


class Writer(Protocol):
    def write(self, data: bytes) -> object: ...
    def close(self) -> FileContent: ...
    def abort(self) -> None: ...


class Reader(Protocol):
    def read(self, offset: int, size: int) -> bytes: ...


class Data(Protocol):
    """What a pending file needs of the store: a streaming writer and a reader of finished content
    (cedanafs.streamer.session.StoreSession has both)."""

    def writer(self) -> Writer: ...
    def reader(self, content: FileContent) -> Reader: ...


class PendingContent:
    """One pending file's bytes: empty, streaming, finished (a FileContent) or spilled locally."""

    def __init__(self, data: Data, spill_dir: str | None = None):
        self._data = data
        self._spill_dir = spill_dir
        self._lock = threading.Lock()
        self._writer: Writer | None = None
        self._spill = None  # a nameless temporary file: gone with the process
        self._content: FileContent | None = EMPTY
        self._failed: Exception | None = None  # bytes were lost: the file is unusable until truncated
        self.size = 0

    @classmethod
    def finished_with(cls, data: Data, content: FileContent) -> "PendingContent":
        """A pending file whose bytes are already in the store (an ingested file)."""
        pending = cls(data)
        pending._content, pending.size = content, content.size
        return pending

    @property
    def state(self) -> str:
        if self._writer is not None:
            return "streaming"
        if self._spill is not None:
            return "spilled"
        return "finished"

    @property
    def finished(self) -> bool:
        return self._writer is None and self._spill is None

    def write(self, offset: int, data: bytes) -> int:
        with self._lock:
            self._check_failed()
            if offset == self.size and self._spill is None:
                try:
                    self._append(data)
                except Exception as exc:
                    self._fail(exc)
                    raise
            else:
                self._to_spill()
                self._spill.seek(offset)
                self._spill.write(data)
                self.size = max(self.size, offset + len(data))
            return len(data)

    def _append(self, data: bytes) -> None:
        if self._writer is None:
            if self.size:
                # Appending to a finished, non-empty file: rare; rewrite it through a spill file.
                self._to_spill()
                self._spill.seek(self.size)
                self._spill.write(data)
                self.size += len(data)
                return
            self._writer = self._data.writer()
            self._content = None
        self._writer.write(data)
        self.size += len(data)

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if self._spill is not None:
                return os.pread(self._spill.fileno(), min(size, max(0, self.size - offset)), offset)
            self._finish_locked()
            content = self._content
        return read_content(self._data, content, offset, size)

    def truncate(self, size: int) -> None:
        with self._lock:
            if size == self.size:
                return
            if size == 0:
                self._discard_locked()
                return
            self._to_spill()
            self._spill.truncate(size)
            self.size = size

    def finish(self) -> FileContent:
        """Make the bytes durable in the store and return them (idempotent)."""
        with self._lock:
            return self._finish_locked()

    def discard(self) -> None:
        with self._lock:
            self._discard_locked()

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise StoreError(f"an earlier write of this file failed ({self._failed}); rewrite it from the start")

    def _finish_locked(self) -> FileContent:
        self._check_failed()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                self._content = writer.close()
            except Exception as exc:
                self._fail(exc, writer)
                raise
        elif self._spill is not None:
            self._content = self._chunk_spill()
        return self._content

    def _chunk_spill(self) -> FileContent:
        writer = self._data.writer()
        try:
            fd, offset = self._spill.fileno(), 0
            while offset < self.size:
                block = os.pread(fd, min(_COPY_BLOCK, self.size - offset), offset)
                if not block:
                    break
                writer.write(block)
                offset += len(block)
            content = writer.close()
        except BaseException:
            self._abort(writer)
            raise
        self._spill.close()
        self._spill = None
        return content

    def _fail(self, exc: Exception, writer: Writer | None = None) -> None:
        """The writer is spent and what it held is lost: remember it, so that sealing fails
        instead of committing a file with a hole (the caller answers EIO)."""
        writer = writer or self._writer
        self._writer = None
        if writer is not None:
            self._abort(writer)
        self._failed = exc

    def _to_spill(self) -> None:
        """Move the bytes written so far into a local file, so they can be rewritten anywhere."""
        if self._spill is not None:
            return
        content = self._finish_locked()
        spill = tempfile.TemporaryFile(dir=self._spill_dir, prefix="cedanafs-spill-", buffering=0)
        offset = 0
        while offset < content.size:
            block = read_content(self._data, content, offset, _COPY_BLOCK)
            if not block:
                break
            spill.write(block)
            offset += len(block)
        self._spill = spill
        log.debug("file of %d bytes moved to a spill file for a non-sequential write", content.size)

    def _discard_locked(self) -> None:
        if self._writer is not None:
            self._abort(self._writer)
            self._writer = None
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._content, self.size = EMPTY, 0
        self._failed = None

    @staticmethod
    def _abort(writer: Writer) -> None:
        try:
            writer.abort()
        except Exception:  # noqa: BLE001 - aborting is best effort; the chunks go at GC anyway
            log.debug("abort of a file writer failed", exc_info=True)


def read_content(data: Data, content: FileContent, offset: int, size: int,
                 reader_factory: Callable[[FileContent], Reader] | None = None) -> bytes:
    """Bytes [offset, offset+size) of finished content (inline or through a store reader)."""
    if offset >= content.size or size <= 0:
        return b""
    if content.inline is not None:
        return content.inline[offset:offset + size]
    return (reader_factory or data.reader)(content).read(offset, min(size, content.size - offset))
