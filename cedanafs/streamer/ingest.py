"""Whole local files into the store and back, at the speed of the native pieces.

`ingest_file` takes a finished file (CRIU's images in a spool directory, a file being imported):
it reads it in large blocks into buffers of its own, finds the chunk cut points in them (the
same as the streaming chunkers give), and hands each chunk to the upload pool as a view of the
block, never a copy, where hashing (BLAKE3), compression (lz4/zstd) and the put run on native
code that releases the GIL. The store's byte budget bounds what is in flight, so memory stays
flat whatever the file's size. `materialize` writes a stored file back to a local path, chunks
fetched, verified and decoded in parallel ahead of the writes.

`ingest_dir` takes a spool directory's regular files. With `follow`, CRIU is still writing into
it: each `pages-<n>.img` is taken in while it grows (it is complete once a later pages image
exists, as CRIU dumps one process after the other), the other files once CRIU's caller drops the
`.complete` marker; `.abandoned`, or the directory vanishing, stops it. While following, the
ingest's threads run at SCHED_IDLE, so CRIU, which holds the process frozen, never waits for them.

`Progress` counts bytes read and bytes done (stored or found in the store) for a caller that
reports them while the ingest runs.
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from cedanafs.errors import CheckpointError, UsageError
from cedanafs.spool import ABANDONED, COMPLETE, pages_images, writer_alive
from cedanafs.types import ChunkRef, FileContent, TransferStats

from .chunkstore import PutResult
from .files import read_to
from ..priority import set_background

if TYPE_CHECKING:
    from .gc import Lease
    from .store import Store

log = logging.getLogger(__name__)

BLOCK = 16 << 20
UNMAP_STEP = 4 << 20
_POLL = 0.002


class IngestAborted(CheckpointError):
    """The spool's writer gave up (CRIU failed) while its files were being taken in."""


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
        try:
            mapping = mmap.mmap(src.fileno(), size, prot=mmap.PROT_READ)
        except (OSError, ValueError):  # a file that cannot be mapped is read
            return _Ingest(store, lease, progress).run(src)
        return _Ingest(store, lease, progress).run_mapped(mapping)


def ingest_dir(store: "Store", source: str, lease: "Lease | None" = None, progress: Progress | None = None,
               follow: bool = False) -> list[tuple[str, os.stat_result, FileContent]]:
    """Every regular file of local dir `source` (hidden names aside): (name, stat, content), by name."""
    progress = progress or Progress()
    done: dict[str, tuple[os.stat_result, FileContent]] = {}
    later: list[tuple[str, list[tuple[int, ChunkRef]]]] = []
    try:
        while follow and not _final(source):
            waiting = [n for n in pages_images(source) if n not in done]
            if not waiting:
                time.sleep(_POLL)
                continue
            name = waiting[0]
            growing = _Growing(os.path.join(source, name), lambda n=name: _later_pages(source, n))
            progress.total = max(progress.total, progress.read)
            # At SCHED_IDLE, and only cut and hashed: CRIU, which holds the process frozen, goes
            # first, and what the store lacks is written once CRIU is done (below).
            ingest = _Ingest(store, lease, progress, background=True, defer_new=True)
            with growing:
                content, _ = ingest.run(growing)
            done[name] = (os.lstat(os.path.join(source, name)), content)
            later.append((name, ingest.new_chunks))
    finally:
        set_background(False)
    for name, new_chunks in later:  # CRIU is done: the chunks the store lacked, from the spool
        _store_new(store, lease, progress, os.path.join(source, name), new_chunks)
    entries = _regular_files(source)
    progress.total = progress.read + sum(st.st_size for name, st in entries if name not in done)
    for name, st in entries:
        if name not in done:
            done[name] = (st, ingest_file(store, os.path.join(source, name), lease, progress)[0])
    return [(name, *done[name]) for name in sorted(done)]


def _final(source: str) -> bool:
    """True once the writer is done; IngestAborted once it gave up, died, or its directory is gone."""
    if os.path.exists(os.path.join(source, COMPLETE)):
        return True
    if os.path.exists(os.path.join(source, ABANDONED)) or not os.path.isdir(source) or not writer_alive(source):
        raise IngestAborted(f"the dump writing {source} failed; nothing was stored")
    return False


def _store_new(store: "Store", lease: "Lease | None", progress: Progress, path: str,
               new_chunks: list[tuple[int, ChunkRef]]) -> None:
    """Store the chunks of a followed file that the store lacked, each read back from the spool
    file at its offset: the file is private to the dump and CRIU never rewrites an image, so the
    bytes are those that were hashed."""
    if not new_chunks:
        return
    first: dict[str, tuple[int, ChunkRef]] = {}
    for offset, ref in sorted(new_chunks, key=lambda c: c[0]):  # in file order; a repeated chunk once
        first.setdefault(ref.digest, (offset, ref))
    new_chunks = list(first.values())
    with open(path, "rb", buffering=0) as src:
        mapping = mmap.mmap(src.fileno(), 0, prot=mmap.PROT_READ)
    _Ingest(store, lease, progress).run_stored(mapping, new_chunks)


def _later_pages(source: str, name: str) -> bool:
    """`name` is final: the writer is done, or has begun a later pages image."""
    if _final(source):
        return True
    pages = pages_images(source)
    return name in pages and pages.index(name) < len(pages) - 1


def _regular_files(source: str) -> list[tuple[str, os.stat_result]]:
    """The regular files of a local directory, hidden names aside; anything else is refused."""
    found = []
    for name in sorted(os.listdir(source)):
        if name.startswith("."):
            continue
        st = os.lstat(os.path.join(source, name))
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{source}/{name} is not a regular file")
        found.append((name, st))
    return found


class _Growing:
    """A file still being appended to: a read at its end waits for more until `final()` says it
    is complete (checked before reading, so the last bytes are never missed)."""

    def __init__(self, path: str, final: Callable[[], bool]):
        self._file = open(path, "rb", buffering=0)
        self._final = final

    def readinto(self, view: memoryview) -> int:
        while True:
            final = self._final()
            n = self._file.readinto(view)
            if n or final:
                return n
            time.sleep(_POLL)

    def __enter__(self) -> "_Growing":
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


class _Ingest:
    def __init__(self, store: "Store", lease: "Lease | None", progress: Progress | None, background: bool = False,
                 defer_new: bool = False):
        self.store = store
        self.lease = lease
        self.background = background
        # defer_new: chunks the store lacks are only hashed, listed in new_chunks (file offset,
        # ref) for run_stored() to write later.
        self.defer_new = defer_new
        self.new_chunks: list[tuple[int, ChunkRef]] = []
        self.progress = progress or Progress()
        self.futures: list[Future] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        # Chunks in flight: enough to keep every pool thread busy, few enough that the blocks
        # they pin stay a few tens of MiB (the mount server's memory stays flat).
        self._slots = threading.BoundedSemaphore(2 * store.streams)

    def run(self, src) -> tuple[FileContent, TransferStats]:
        set_background(self.background)
        return self._finish(lambda: self._feed(src))

    def _finish(self, feed: Callable[[], int]) -> tuple[FileContent, TransferStats]:
        """Run `feed` (which submits every chunk), then wait for them all; the file's content."""
        try:
            size = feed()
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

    def run_mapped(self, mapping: mmap.mmap) -> tuple[FileContent, TransferStats]:
        """Ingest a whole mapped file: chunks are views of the mapping, never copied (the pages
        are the spool's own; hashing and the store's writev read them in place)."""
        try:
            view = memoryview(mapping)
            try:
                return self._finish(lambda: self._cut_all(mapping, view))
            finally:
                view.release()
        finally:
            try:
                mapping.close()
            except BufferError:  # a chunk view still referenced somewhere: the GC unmaps it
                pass

    def run_stored(self, mapping: mmap.mmap, chunks: list[tuple[int, ChunkRef]]) -> None:
        """Store chunks of a mapped file already hashed: (offset, ref) each."""
        try:
            view = memoryview(mapping)
            try:
                try:
                    for offset, ref in chunks:
                        _populate(mapping, offset, ref.size)
                        self._submit(view[offset:offset + ref.size],
                                     lambda at=offset, n=ref.size: _unmap(mapping, at, n), digest=ref.digest)
                finally:
                    wait(self.futures)
                if self.error is not None:
                    raise self.error
            finally:
                view.release()
        finally:
            try:
                mapping.close()
            except BufferError:
                pass

    def _cut_all(self, mapping: mmap.mmap, view: memoryview) -> int:
        # Mapped ahead of the cut finder (it reads up to two windows past a chunk's start; pages
        # not mapped yet fault in), within a quarter of the store's memory limit: mapped pages
        # of the spool count in our resident memory.
        ahead = min(2 * BLOCK, max(self.store.budget.limit // 4, BLOCK // 4)) + self.store.chunker.max_size
        start, mapped, unmapped = 0, 0, 0
        cuts = self.store.chunker.cuts(view, window=BLOCK)
        while start < len(view):
            while mapped < min(len(view), start + ahead):  # a window mapped in one call, not a fault per page
                mapped = _populate(mapping, mapped, BLOCK)
            unmapped = self._unmap_behind(mapping, start, unmapped)
            end = next(cuts)
            self.progress.read += end - start
            self._submit(view[start:end], _nothing)
            start = end
        return start

    def _unmap_behind(self, mapping: mmap.mmap, start: int, unmapped: int) -> int:
        """Drop from our mapping what lies well behind the chunk cut last: as far behind as the
        chunks in flight can reach (2 x streams of them), so that it is stored by now but for a
        straggler, which only faults its pages back in. In steps of UNMAP_STEP rather than a chunk
        at a time: each drop interrupts the other core to flush its TLB, ~600 times per GiB at a
        chunk each. Returns the new end of what was dropped."""
        lag = 2 * self.store.streams * self.store.chunker.max_size
        behind = (start - lag) // UNMAP_STEP * UNMAP_STEP
        if behind > unmapped:
            _unmap(mapping, unmapped, behind - unmapped)
            return behind
        return unmapped

    def _feed(self, src) -> int:
        spec = self.store.chunker
        blocks = _Blocks(BLOCK + spec.max_size)
        buf, carry, total = blocks.get(), 0, 0
        while True:
            filled = carry + _read_into(src, memoryview(buf)[carry:carry + BLOCK])
            eof = filled < carry + BLOCK
            self.progress.read += filled - carry
            view = memoryview(buf)[:filled]
            start = 0
            while True:
                end = spec.next_cut(view, start, filled, final=eof)
                if end is None:
                    break
                blocks.hold(buf)
                self._submit(view[start:end], lambda b=buf: blocks.drop(b), offset=total + start)
                start = end
            total += start
            if eof:
                return total
            nxt = blocks.get()
            carry = filled - start
            nxt[:carry] = view[start:]  # at most one chunk's worth, copied once
            view.release()
            blocks.retire(buf)
            buf = nxt

    def _submit(self, chunk: memoryview, done: Callable[[], None], offset: int = 0, digest: str | None = None) -> None:
        if self.error is not None:
            done()
            raise self.error
        budget = self.store.budget
        self._slots.acquire()
        reserved = budget.acquire(len(chunk))
        try:
            fut = self.store.upload_pool.submit(self._store_chunk, chunk, reserved, offset, digest)
        except BaseException:
            budget.release(reserved)
            self._slots.release()
            done()
            raise
        fut.add_done_callback(lambda _: done())
        self.futures.append(fut)

    def _store_chunk(self, chunk: memoryview, reserved: int, offset: int, digest: str | None) -> PutResult:
        set_background(self.background)  # a pool thread: back to normal below, whatever it does next
        try:
            if self.defer_new:
                return self._hash_chunk(chunk, offset)
            result = self.store.chunks.store(chunk, self.lease, digest)
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
            self._slots.release()
            set_background(False)


    def _hash_chunk(self, chunk: memoryview, offset: int) -> PutResult:
        """defer_new: the chunk's ref, reused if the store has it, else listed for run_stored()."""
        ref = ChunkRef(self.store.chunks.digest(chunk), len(chunk))
        result = self.store.chunks.reuse(ref, self.lease)
        with self._lock:
            if result is None:
                self.new_chunks.append((offset, ref))
            else:
                self.progress.done += len(chunk)
        return result or PutResult(ref, 0, new=True)


class _Blocks:
    """Read buffers used again: a block goes back to the free list once the feeder has moved on
    and every chunk cut from it is stored. (A fresh 16 MiB bytearray per block is zero-filled and
    page-faulted in: a fifth of the ingest's CPU, measured.)"""

    def __init__(self, size: int):
        self.size = size
        self._free: list[bytearray] = []
        self._users: dict[int, int] = {}
        self._retired: set[int] = set()
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            return self._free.pop() if self._free else bytearray(self.size)

    def hold(self, buf: bytearray) -> None:
        with self._lock:
            self._users[id(buf)] = self._users.get(id(buf), 0) + 1

    def drop(self, buf: bytearray) -> None:
        with self._lock:
            left = self._users[id(buf)] = self._users[id(buf)] - 1
            if left == 0 and id(buf) in self._retired:
                self._retired.discard(id(buf))
                self._free.append(buf)

    def retire(self, buf: bytearray) -> None:
        """The feeder is done with `buf`: free it now, or when its last chunk is stored."""
        with self._lock:
            if self._users.get(id(buf), 0) == 0:
                self._free.append(buf)
            else:
                self._retired.add(id(buf))


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14


def _populate(mapping: mmap.mmap, start: int, length: int) -> int:
    """Map [start, start+length) of the file now (a page fault each costs more); the new end."""
    length = min(length, len(mapping) - start)
    try:
        mapping.madvise(MADV_POPULATE_READ, start, length)
    except (OSError, ValueError):
        pass  # an older kernel: the pages fault in as they are read
    return start + length


def _nothing() -> None:
    pass


def _unmap(mapping: mmap.mmap, start: int, length: int) -> None:
    """Drop a stored chunk's pages from our mapping (the file keeps them): the mount server's
    resident memory stays the chunks in flight, not the whole file."""
    try:
        mapping.madvise(mmap.MADV_DONTNEED, start, length)
    except (OSError, ValueError):
        pass


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
