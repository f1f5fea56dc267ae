"""Cutting a byte stream into chunks: fixed page-aligned chunks or page-granular content-defined chunks.

Both chunkers are incremental (feed() any slices, then flush()) and deterministic: the chunks
depend only on the bytes, never on how they were fed. Sizes are multiples of the page size
(except a file's last chunk), matching how CRIU lays out pages-*.img.

`PageCdcChunker` is content-defined at page granularity: it cuts after a page whose fingerprint
(crc32 of the page) hits a mask, within [min, max]. When a process maps, frees or faults pages,
CRIU's pages image shifts by whole pages; page-granular cut points move with the content, so the
chunks after the change are found again, where fixed chunks would all change. docs/store.md
has the measurement behind the choice.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from cedanafs.errors import UsageError

PAGE = 4096


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

    @classmethod
    def for_size(cls, kind: str, avg: int) -> "ChunkerSpec":
        """A spec around `avg` (page-aligned) with min avg/4 and max avg*4."""
        avg = max(PAGE, avg // PAGE * PAGE)
        return cls(kind=kind, avg=avg, min=max(PAGE, avg // 4), max=avg * 4)


class Chunker:
    """Incremental chunker: feed() returns the chunks completed so far, flush() the rest."""

    max_size: int = 0

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        return self._cut(final=False)

    def flush(self) -> list[bytes]:
        return self._cut(final=True)

    @property
    def pending(self) -> int:
        """Bytes held back, not yet part of a returned chunk."""
        return len(self._buf)

    def _cut(self, final: bool) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        view = memoryview(self._buf)
        while True:
            end = self._boundary(view, start, final)
            if end is None:
                break
            out.append(bytes(view[start:end]))
            start = end
        view.release()
        del self._buf[:start]
        return out

    def _boundary(self, view: memoryview, start: int, final: bool) -> int | None:
        raise NotImplementedError


class FixedChunker(Chunker):
    """Chunks of exactly `size` bytes (the last one shorter)."""

    def __init__(self, size: int = 1 << 20):
        super().__init__()
        if size <= 0 or size % PAGE:
            raise UsageError(f"fixed chunk size must be a positive multiple of {PAGE}, not {size}")
        self.size = self.max_size = size

    def _boundary(self, view: memoryview, start: int, final: bool) -> int | None:
        left = len(view) - start
        if left >= self.size:
            return start + self.size
        return start + left if final and left else None


class PageCdcChunker(Chunker):
    """Content-defined cut points at page boundaries: after a page whose crc32 & mask == mask."""

    def __init__(self, min_size: int = 256 << 10, avg_size: int = 1 << 20, max_size: int = 4 << 20):
        super().__init__()
        if not (PAGE <= min_size <= avg_size <= max_size) or min_size % PAGE or max_size % PAGE:
            raise UsageError("cdc sizes must be page multiples with min <= avg <= max")
        self.min_pages = min_size // PAGE
        self.max_pages = max_size // PAGE
        self.max_size = max_size
        # A cut is due with probability 1/n per page past min, for an average of ~avg_size.
        n = max(1, (avg_size - min_size) // PAGE)
        self._mask = (1 << round(math.log2(n))) - 1
        self._resume = self.min_pages  # pages of the pending chunk already scanned without a cut

    def _boundary(self, view: memoryview, start: int, final: bool) -> int | None:
        left = len(view) - start
        if left <= 0:
            return None
        pages = left // PAGE
        limit = min(pages, self.max_pages)
        mask, crc = self._mask, zlib.crc32
        first = self._resume if start == 0 else self.min_pages
        for i in range(first, limit + 1):
            # Fingerprint the page that ends at page i (i.e. the last page of the candidate chunk).
            off = start + (i - 1) * PAGE
            if crc(view[off:off + PAGE]) & mask == mask:
                self._resume = self.min_pages
                return start + i * PAGE
        if pages >= self.max_pages:
            self._resume = self.min_pages
            return start + self.max_pages * PAGE
        if final:
            self._resume = self.min_pages
            return start + left
        # Remember how far the pending chunk was scanned, so the next feed() does not rescan it.
        self._resume = max(self.min_pages, limit + 1)
        return None


def chunk_bytes(data: bytes, spec: ChunkerSpec) -> list[bytes]:
    """All chunks of `data` at once (tests, measurements)."""
    chunker = spec.make()
    return chunker.feed(data) + chunker.flush()
