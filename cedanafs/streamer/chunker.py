"""Cutting a byte stream into chunks: fixed page-aligned chunks or page-granular content-defined chunks.

Both chunkers are incremental (feed() any slices, then flush()) and deterministic: the chunks
depend only on the bytes, never on how they were fed. Sizes are multiples of the page size
(except a file's last chunk), matching how CRIU lays out pages-*.img.

`PageCdcChunker` is content-defined at page granularity: it cuts after a page whose fingerprint
hits a mask, within [min, max]. A page's fingerprint is a multiply-sum of every 64th 64-bit word of
it with fixed odd keys (`page_fingerprints`), computed by numpy for a whole run of pages in one
call that releases the GIL: a Python loop over pages (crc32 each) held the GIL for ~0.4 s per
GiB and starved the threads that hash and compress. When a process maps, frees or faults pages,
CRIU's pages image shifts by whole pages; page-granular cut points move with the content, so the
chunks after the change are found again, where fixed chunks would all change. docs/store.md
has the measurement behind the choice.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Iterator
from dataclasses import dataclass

import blake3
import numpy as np

from cedanafs.errors import UsageError
from cedanafs.types import PAGE_SIZE

PAGE = PAGE_SIZE
_WORDS = PAGE // 8
_STRIDE = 64  # every 64th word (one per 512 bytes, one cache line in eight) goes into its fingerprint
# Fixed keys (from a fixed string, not a random generator whose stream could change between numpy
# releases): the cut points, and with them dedup against older checkpoints, must never change.
_KEYS = np.frombuffer(blake3.blake3(b"cedanafs page fingerprint v2").digest(length=8 * _WORDS // _STRIDE),
                      dtype="<u8") | np.uint64(1)
_SHIFT = np.uint64(40)


def page_fingerprints(buf, offset: int, pages: int) -> np.ndarray:
    """The fingerprints of `pages` whole pages of `buf` from byte `offset` (uint64 each)."""
    words = np.frombuffer(buf, dtype="<u8", count=pages * _WORDS, offset=offset).reshape(pages, _WORDS)
    return (words[:, ::_STRIDE] * _KEYS).sum(axis=1, dtype=np.uint64) >> _SHIFT


def first_cut(buf, offset: int, first: int, limit: int, mask: int) -> int | None:
    """The first i in [first, limit] whose page i-1 (counted from `offset`) is a cut point."""
    if first > limit:
        return None
    fp = page_fingerprints(buf, offset + (first - 1) * PAGE, limit - first + 1)
    hits = np.flatnonzero((fp & np.uint64(mask)) == np.uint64(mask))
    return first + int(hits[0]) if hits.size else None


@dataclass(frozen=True)
class ChunkerSpec:
    """Which chunker and sizes: kind 'fixed' or 'cdc'; avg is the fixed size for 'fixed'."""

    kind: str = "cdc"
    avg: int = 1 << 20
    min: int = 256 << 10
    max: int = 4 << 20

    @property
    def max_size(self) -> int:
        """The largest chunk this spec produces."""
        return self.avg if self.kind == "fixed" else self.max

    def make(self) -> "Chunker":
        if self.kind == "fixed":
            return FixedChunker(self.avg)
        if self.kind == "cdc":
            return PageCdcChunker(self.min, self.avg, self.max)
        raise UsageError(f"unknown chunker {self.kind!r} (use 'fixed' or 'cdc')")

    def next_cut(self, view: memoryview, start: int, end: int, final: bool) -> int | None:
        """Where the chunk starting at `start` ends, with view[start:end] available; None: not
        known until more bytes come. The same cut points as make()'s incremental chunkers give
        (tests check it), for callers that hold a whole block of a file (ingest.py)."""
        left = end - start
        if left <= 0:
            return None
        if self.kind == "fixed":
            return start + self.avg if left >= self.avg else (end if final else None)
        pages = left // PAGE
        min_pages, max_pages = self.min // PAGE, self.max // PAGE
        cut = first_cut(view, start, min_pages, min(pages, max_pages), cdc_mask(self.min, self.avg))
        if cut is not None:
            return start + cut * PAGE
        if pages >= max_pages:
            return start + self.max
        return end if final else None

    def cuts(self, view: memoryview, window: int = 16 << 20) -> Iterator[int]:
        """The end of every chunk of the whole buffer `view`, in order: the cut points next_cut()
        gives, found from one fingerprint pass per `window` bytes instead of one numpy pass per
        chunk (each pass gives the GIL away and back; the threads hashing and writing the chunks
        want it meanwhile)."""
        total = len(view)
        if self.kind == "fixed":
            yield from range(self.avg, total, self.avg)
            if total:
                yield total
            return
        pages, mask = total // PAGE, cdc_mask(self.min, self.avg)
        min_pages, max_pages = self.min // PAGE, self.max // PAGE
        hits: list[int] = []  # pages (from the start of view) after which a cut is due, ascending
        known = 0  # pages whose fingerprints are in `hits`
        pos = 0  # where the current chunk starts (a page boundary until the file's last chunk)
        while pos < total:
            start = pos // PAGE
            need = min(pages, start + max_pages)
            while known < need:  # fingerprints of the pages this chunk may end in
                count = min(pages, max(need, known + window // PAGE)) - known
                fp = page_fingerprints(view, known * PAGE, count)
                hits.extend((known + np.flatnonzero((fp & np.uint64(mask)) == np.uint64(mask))).tolist())
                known += count
            # The first hit page h with start + min_pages - 1 <= h < start + min(max_pages, pages - start).
            at = bisect.bisect_left(hits, start + min_pages - 1)
            if at < len(hits) and hits[at] < need:
                end = (hits[at] + 1) * PAGE
            elif need - start >= max_pages:
                end = (start + max_pages) * PAGE
            else:
                end = total
            yield end
            pos = end

    @classmethod
    def for_size(cls, kind: str, avg: int) -> "ChunkerSpec":
        """A spec around `avg` (page-aligned) with min avg/4 and max avg*4."""
        avg = max(PAGE, avg // PAGE * PAGE)
        return cls(kind=kind, avg=avg, min=max(PAGE, avg // 4), max=avg * 4)


def cdc_mask(min_size: int, avg_size: int) -> int:
    """A cut is due with probability 1/n per page past min, for an average of ~avg_size."""
    n = max(1, (avg_size - min_size) // PAGE)
    return (1 << round(math.log2(n))) - 1


class Chunker:
    """Incremental chunker: feed() returns the chunks completed so far, flush() the rest.

    The bytes fed are kept as the caller's own (immutable) objects, not appended into one
    buffer: each byte is copied once, into the chunk that holds it. (Appending to a bytearray,
    then slicing chunks out of it, copied every byte two or three times; on this machine that
    was half of the chunker's CPU time.)
    """

    max_size: int = 0

    def __init__(self) -> None:
        self._pieces: deque[memoryview] = deque()  # pending bytes, in order
        self._len = 0

    def feed(self, data: bytes) -> list[bytes]:
        if data:
            # Only immutable bytes are kept by reference; anything else is copied once here.
            self._pieces.append(memoryview(data if isinstance(data, bytes) else bytes(data)))
            self._len += len(data)
        return self._cut(final=False)

    def flush(self) -> list[bytes]:
        return self._cut(final=True)

    @property
    def pending(self) -> int:
        """Bytes held back, not yet part of a returned chunk."""
        return self._len

    def _cut(self, final: bool) -> list[bytes]:
        out: list[bytes] = []
        while True:
            size = self._boundary(final)
            if size is None:
                break
            out.append(self._take(size))
        return out

    def _take(self, size: int) -> bytes:
        """The first `size` pending bytes, as one bytes object; they stop being pending."""
        parts, need = [], size
        pieces = self._pieces
        while need:
            head = pieces[0]
            if len(head) <= need:
                parts.append(head)
                pieces.popleft()
                need -= len(head)
            else:
                parts.append(head[:need])
                pieces[0] = head[need:]
                need = 0
        self._len -= size
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def _boundary(self, final: bool) -> int | None:
        """The size of the next chunk from the start of the pending bytes, or None: not yet."""
        raise NotImplementedError


class FixedChunker(Chunker):
    """Chunks of exactly `size` bytes (the last one shorter)."""

    def __init__(self, size: int = 1 << 20):
        super().__init__()
        if size <= 0 or size % PAGE:
            raise UsageError(f"fixed chunk size must be a positive multiple of {PAGE}, not {size}")
        self.size = self.max_size = size

    def _boundary(self, final: bool) -> int | None:
        left = self._len
        if left >= self.size:
            return self.size
        return left if final and left else None


class PageCdcChunker(Chunker):
    """Content-defined cut points at page boundaries: after a page whose crc32 & mask == mask."""

    def __init__(self, min_size: int = 256 << 10, avg_size: int = 1 << 20, max_size: int = 4 << 20):
        super().__init__()
        if not (PAGE <= min_size <= avg_size <= max_size) or min_size % PAGE or max_size % PAGE:
            raise UsageError("cdc sizes must be page multiples with min <= avg <= max")
        self.min_pages = min_size // PAGE
        self.max_pages = max_size // PAGE
        self.max_size = max_size
        self._mask = cdc_mask(min_size, avg_size)
        self._resume = self.min_pages  # pages of the pending chunk already scanned without a cut

    def _boundary(self, final: bool) -> int | None:
        left = self._len
        if left <= 0:
            return None
        pages = left // PAGE
        limit = min(pages, self.max_pages)
        cut = self._scan(self._resume, limit)
        if cut is not None:
            self._resume = self.min_pages
            return cut * PAGE
        if pages >= self.max_pages:
            self._resume = self.min_pages
            return self.max_pages * PAGE
        if final:
            self._resume = self.min_pages
            return left
        # Remember how far the pending chunk was scanned, so the next feed() does not rescan it.
        self._resume = max(self.min_pages, limit + 1)
        return None

    def _scan(self, first: int, limit: int) -> int | None:
        """The first i in [first, limit] whose page i-1 (the chunk's last page) is a cut point."""
        if first > limit:
            return None
        head = self._pieces[0]
        if limit * PAGE <= len(head):  # the common case: every page to scan lies in one piece
            return first_cut(head, 0, first, limit, self._mask)
        lo, hi = (first - 1) * PAGE, limit * PAGE  # pages straddle pieces: gather them once
        cut = first_cut(self._gather(lo, hi - lo), 0, 1, limit - first + 1, self._mask)
        return None if cut is None else cut + first - 1

    def _gather(self, off: int, length: int) -> bytes:
        parts, base, need = [], 0, length
        for piece in self._pieces:
            end = base + len(piece)
            if end > off and need:
                lo = max(off - base, 0)
                part = piece[lo:lo + need]
                parts.append(part)
                need -= len(part)
            base = end
            if not need:
                break
        return b"".join(parts)


def chunk_bytes(data: bytes, spec: ChunkerSpec) -> list[bytes]:
    """All chunks of `data` at once (tests, measurements)."""
    chunker = spec.make()
    return chunker.feed(data) + chunker.flush()
