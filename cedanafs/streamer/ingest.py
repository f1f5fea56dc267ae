"""Whole local files into the store and back, at the speed of the native pieces.

`ingest_file` takes a finished file (CRIU's images in a spool directory, a file being imported):
it reads it in large blocks into buffers of its own, finds the chunk cut points in them (the
same as the streaming chunkers give), and hands each chunk to the upload pool as a view of the
block, never a copy, where hashing (BLAKE3), compression (lz4/zstd) and the put run on native
code that releases the GIL. The store's byte budget bounds what is in flight, so memory stays
flat whatever the file's size. `materialize` writes a stored file back to a local path, chunks
fetched, verified and decoded in parallel ahead of the writes.

`Progress` counts bytes read and bytes done (stored or found in the store) for a caller that
reports them while the ingest runs.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cedanafs.types import FileContent, TransferStats

from .chunkstore import PutResult
from .files import read_to

if TYPE_CHECKING:
    from .gc import Lease
    from .store import Store

log = logging.getLogger(__name__)

BLOCK = 16 << 20


@dataclass
class Progress:
    """Counters a reporter may read at any time (plain ints: a torn read is harmless)."""

    total: int = 0
    read: int = 0
    done: int = 0
    stored: int = 0


def ingest_file(store: "Store", path: str, lease: "Lease | None" = None,
                progress: Progress | None = None) -> tuple[FileContent, TransferStats]:
    """Store the file at `path`; its content and what storing it cost."""
    with open(path, "rb", buffering=0) as src:
        size = os.fstat(src.fileno()).st_size
        if size < store.inline_threshold:
            data = src.read()
            if progress:
                progress.read += len(data)
                progress.done += len(data)
            return FileContent(size=len(data), inline=data), TransferStats(logical_bytes=len(data))
        return _Ingest(store, lease, progress).run(src)


class _Ingest:
    def __init__(self, store: "Store", lease: "Lease | None", progress: Progress | None):
        self.store = store
        self.lease = lease
        self.progress = progress or Progress()
        self.futures: list[Future] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def run(self, src) -> tuple[FileContent, TransferStats]:
        try:
            size = self._feed(src)
        except BaseException:
            for fut in self.futures:
                fut.cancel()
            wait(self.futures)
            raise
        wait(self.futures)
        if self.error is not None:
            raise self.error
        results: list[PutResult] = [f.result() for f in self.futures]
        content = FileContent(size=size, chunks=tuple(r.ref for r in results))
        return content, _stats(size, results)

    def _feed(self, src) -> int:
        spec = self.store.chunker
        carry = b""
        total = 0
        while True:
            buf = bytearray(len(carry) + BLOCK)
            buf[:len(carry)] = carry
            filled = len(carry) + _read_into(src, memoryview(buf)[len(carry):])
            eof = filled < len(buf)
            self.progress.read += filled - len(carry)
            view = memoryview(buf)[:filled]
            start = 0
            while True:
                end = spec.next_cut(view, start, filled, final=eof)
                if end is None:
                    break
                self._submit(view[start:end])
                start = end
            total += start
            if eof:
                return total
            carry = bytes(view[start:])  # at most one chunk's worth, copied once

    def _submit(self, chunk: memoryview) -> None:
        if self.error is not None:
            raise self.error
        budget = self.store.budget
        reserved = budget.acquire(len(chunk))
        try:
            fut = self.store.upload_pool.submit(self._store_chunk, chunk, reserved)
        except BaseException:
            budget.release(reserved)
            raise
        self.futures.append(fut)

    def _store_chunk(self, chunk: memoryview, reserved: int) -> PutResult:
        try:
            result = self.store.chunks.store(chunk, self.lease)
            with self._lock:
                self.progress.done += len(chunk)
                self.progress.stored += result.stored_bytes
            return result
        except BaseException as exc:
            with self._lock:
                self.error = self.error or exc
            raise
        finally:
            self.store.budget.release(reserved)


def _read_into(src, view: memoryview) -> int:
    """Fill `view` from src; fewer bytes only at the end of the file."""
    got = 0
    while got < len(view):
        n = src.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _stats(size: int, results: list[PutResult]) -> TransferStats:
    return TransferStats(
        logical_bytes=size,
        stored_bytes=sum(r.stored_bytes for r in results),
        new_chunks=sum(1 for r in results if r.new),
        reused_chunks=sum(1 for r in results if not r.new),
    )


def materialize(store: "Store", content: FileContent, path: str, mode: int = 0o600) -> int:
    """Write a stored file to `path` (created, never followed through a link); bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb", buffering=0) as dst:
        return read_to(store, content, dst)
