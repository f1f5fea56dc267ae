"""Streaming a file into the chunk store and reading byte ranges back.

FileWriter: append-only; cuts the stream with the store's chunker, hashes/compresses/uploads the
chunks in parallel on the store's upload pool, under a hard byte budget shared by every writer
of the store (write() blocks while it is used up: backpressure). Files under the inline threshold
come back as FileContent(inline=...) to be packed into the manifest.

FileReader: read(offset, size) pulls only the chunks it touches through the chunk cache
(single-flight), and reads ahead in the background when reads are sequential.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from concurrent.futures import Future, wait
from concurrent.futures import Executor
from typing import BinaryIO, Iterator, Protocol

from cedanafs.types import FileContent, TransferStats

from .cache import ChunkCache
from .chunker import ChunkerSpec
from .chunkstore import ChunkStore, Lease, PutResult

log = logging.getLogger(__name__)

INLINE_THRESHOLD = 64 << 10
COPY_BLOCK = 1 << 20


class Parts(Protocol):
    """What writers and readers use of a store (store.Store has these): its chunks, chunker,
    byte budget and pools. Named here so that this module does not depend on the facade."""

    chunks: ChunkStore
    chunker: ChunkerSpec
    budget: "ByteBudget"
    cache: ChunkCache
    inline_threshold: int
    readahead: int
    upload_pool: Executor
    read_pool: Executor


class ByteBudget:
    """A counting semaphore over bytes: acquire(n) blocks until n more bytes fit under the limit."""

    def __init__(self, limit: int):
        if limit <= 0:
            raise ValueError("byte budget must be positive")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> int:
        """Reserve n bytes (at most the whole limit, so one huge item cannot deadlock); returns n."""
        n = min(n, self.limit)
        with self._cond:
            while self.used + n > self.limit:
                self._cond.wait()
            self.used += n
            self.peak = max(self.peak, self.used)
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class FileWriter:
    """Write one file's bytes sequentially; close() returns its FileContent once all chunks are durable."""

    def __init__(self, store: Parts, lease: Lease | None = None,
                 inline_threshold: int | None = None, streams: int | None = None):
        self._store = store
        # At most `streams` chunks of this file in flight (the store's pool bounds all writers).
        self._slots = threading.BoundedSemaphore(streams) if streams and streams > 0 else None
        self._reserved: dict[Future, int] = {}
        self._lease = lease
        self._threshold = store.inline_threshold if inline_threshold is None else inline_threshold
        self._chunker = store.chunker.make()
        self._prefix: bytearray | None = bytearray()
        self._futures: list[Future] = []
        self._size = 0
        self._error: BaseException | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.stats = TransferStats()

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        self._check_open()
        self._size += len(data)
        if self._prefix is not None:
            # Hold the head back until we know the file is not small enough to be inline.
            self._prefix += data
            if len(self._prefix) < self._threshold:
                return len(data)
            data, self._prefix = bytes(self._prefix), None
        for chunk in self._chunker.feed(data):
            self._submit(chunk)
        return len(data)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("write to a closed FileWriter")
        if self._error is not None:
            raise self._error

    def _submit(self, chunk: bytes) -> None:
        if self._slots is not None:
            self._slots.acquire()
        reserved = 0
        try:
            reserved = self._store.budget.acquire(len(chunk))
            self._check_open()
            fut = self._store.upload_pool.submit(self._upload, chunk, reserved)
        except BaseException:
            self._release(reserved)
            raise
        self._reserved[fut] = reserved
        self._futures.append(fut)

    def _release(self, reserved: int) -> None:
        if reserved:
            self._store.budget.release(reserved)
        if self._slots is not None:
            self._slots.release()

    def _upload(self, chunk: bytes, reserved: int) -> PutResult:
        try:
            return self._store.chunks.store(chunk, self._lease)
        except BaseException as exc:
            with self._lock:
                if self._error is None:
                    self._error = exc
            raise
        finally:
            self._release(reserved)

    def close(self) -> FileContent:
        """Flush, wait until every chunk is stored, and describe the file."""
        self._check_open()
        if self._prefix is not None and len(self._prefix) < self._threshold:
            self._closed = True
            return FileContent(size=self._size, inline=bytes(self._prefix))
        try:
            if self._prefix is not None:
                for chunk in self._chunker.feed(bytes(self._prefix)):
                    self._submit(chunk)
                self._prefix = None
            for chunk in self._chunker.flush():
                self._submit(chunk)
        finally:
            wait(self._futures)
            self._closed = True
        results = self._results()
        self.stats = _stats(self._size, results)
        return FileContent(size=self._size, chunks=tuple(r.ref for r in results))

    def _results(self) -> list[PutResult]:
        if self._error is not None:
            raise self._error
        return [f.result() for f in self._futures]

    def abort(self) -> None:
        """Stop: pending uploads are cancelled, running ones awaited. Nothing is returned; chunks
        already stored stay unreferenced until GC removes them."""
        if self._closed:
            return
        self._closed = True
        for fut in self._futures:
            if fut.cancel():  # it never ran, so it never gave back its bytes
                self._release(self._reserved[fut])
        wait(self._futures)
        self._chunker = self._store.chunker.make()

    def __enter__(self) -> "FileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _stats(size: int, results: list[PutResult]) -> TransferStats:
    return TransferStats(
        logical_bytes=size,
        stored_bytes=sum(r.stored_bytes for r in results),
        new_chunks=sum(1 for r in results if r.new),
        reused_chunks=sum(1 for r in results if not r.new),
        extra={"touched_chunks": sum(1 for r in results if r.touched)},
    )


class FileReader:
    """Random-access reads of one stored file."""

    def __init__(self, store: Parts, content: FileContent, cache: ChunkCache | None = None,
                 readahead: int | None = None):
        self._store = store
        self.content = content
        self._cache = cache or store.cache
        self._readahead = store.readahead if readahead is None else readahead
        self._starts = []
        pos = 0
        for ref in content.chunks:
            self._starts.append(pos)
            pos += ref.size
        if content.inline is None and pos != content.size:
            raise ValueError(f"chunk sizes add up to {pos}, not the file size {content.size}")
        self._next_offset = -1
        self._ahead: dict[int, Future] = {}
        self._lock = threading.Lock()  # FUSE may read one open file from several threads

    @property
    def size(self) -> int:
        return self.content.size

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset` (short only at the end of the file)."""
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        end = min(offset + size, self.content.size)
        if offset >= end:
            return b""
        if self.content.inline is not None:
            return self.content.inline[offset:end]
        first = bisect.bisect_right(self._starts, offset) - 1
        parts, index, pos = [], first, offset
        while pos < end:
            data = self._chunk(index)
            start = self._starts[index]
            parts.append(data[pos - start:min(end, start + len(data)) - start])
            pos = start + len(data)
            index += 1
        with self._lock:
            if offset == self._next_offset or offset == 0:
                self._prefetch(index)
            self._next_offset = end
        return b"".join(parts)

    def _chunk(self, index: int) -> bytes:
        ref = self.content.chunks[index]
        return self._cache.get_or_fetch(ref.digest, lambda: self._store.chunks.get(ref))

    def _prefetch(self, start: int) -> None:
        """Sequential reading: fetch the next few chunks in the background."""
        for fut_index in [i for i, f in self._ahead.items() if f.done()]:
            del self._ahead[fut_index]
        for index in range(start, min(start + self._readahead, len(self.content.chunks))):
            if index in self._ahead or self._cache.contains(self.content.chunks[index].digest):
                continue
            self._ahead[index] = self._store.read_pool.submit(self._quiet_chunk, index)

    def _quiet_chunk(self, index: int) -> None:
        try:
            self._chunk(index)
        except Exception as exc:  # noqa: BLE001 - the foreground read reports it if it matters
            log.debug("readahead of chunk %d failed: %s", index, exc)

    def close(self) -> None:
        with self._lock:
            for fut in self._ahead.values():
                fut.cancel()
            self._ahead.clear()

    def __enter__(self) -> "FileReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_stream(store: Parts, src: BinaryIO, lease: Lease | None = None) -> FileContent:
    """Store everything read from src."""
    writer = FileWriter(store, lease)
    try:
        while True:
            block = src.read(COPY_BLOCK)
            if not block:
                break
            writer.write(block)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_to(store: Parts, content: FileContent, dst: BinaryIO) -> int:
    """Write the whole file to dst, fetching chunks ahead in parallel; returns bytes written."""
    written = 0
    for data in _chunks_ahead(store, content):
        dst.write(data)
        written += len(data)
    return written


def write_to(store: Parts, content: FileContent, fd: int) -> int:
    """Write the whole file to file descriptor `fd` (a pipe CRIU reads), chunks fetched, verified
    and decoded on the read pool ahead of the writes into buffers used again and again (no new
    memory per chunk: page faults cost more than the copies); returns bytes written."""
    if content.inline is not None:
        _write_all(fd, memoryview(content.inline))
        return content.size
    chunks = content.chunks
    if not chunks:
        return 0
    ahead = max(2, store.readahead)
    size = max(ref.size for ref in chunks)
    # (stored object, plain bytes) buffers of each chunk in flight; an object stored plain is
    # at most a header byte longer than its chunk, a compressed one shorter.
    free = [(bytearray(size + _HEADROOM), bytearray(size)) for _ in range(min(ahead + 1, len(chunks)))]
    futures: dict[int, tuple[Future, tuple[bytearray, bytearray]]] = {}
    written = 0
    try:
        for i in range(len(chunks)):
            for j in range(i, min(i + 1 + ahead, len(chunks))):
                if j not in futures and free:
                    bufs = free.pop()
                    futures[j] = (store.read_pool.submit(store.chunks.get_into, chunks[j], *bufs), bufs)
            fut, bufs = futures.pop(i)
            with fut.result() as data:
                _write_all(fd, data)
                written += len(data)
            free.append(bufs)
    finally:
        for fut, _ in futures.values():
            fut.cancel()
        wait([fut for fut, _ in futures.values()])  # no pool thread writes into a buffer we dropped
    return written


_HEADROOM = 64 << 10


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _chunks_ahead(store: Parts, content: FileContent) -> Iterator[bytes]:
    """The file's plain bytes, chunk by chunk in order, the next ones fetched on the read pool."""
    if content.inline is not None:
        yield content.inline
        return
    ahead = max(1, store.readahead)
    chunks = content.chunks
    futures: dict[int, Future] = {}
    try:
        for i in range(len(chunks)):
            for j in range(i, min(i + 1 + ahead, len(chunks))):
                if j not in futures:
                    futures[j] = store.read_pool.submit(store.chunks.get, chunks[j])
            yield futures.pop(i).result()
    finally:
        for fut in futures.values():
            fut.cancel()
