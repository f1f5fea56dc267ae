"""gzip and zlib streams written on all cores: the writer behind `--compression gzip` and `zlib`.

pigz's layout, as python-isal's threaded gzip writer has it too: the input is cut into blocks of
1 MiB, each compressed by ISA-L in a worker thread with the 32 KiB before it as its dictionary and
ended on a byte boundary (a sync flush), so the blocks concatenate, in order, into one deflate
stream that any inflater (`gzip -d`, `tar -xz`, zlib, Go's compress/*) reads as usual. The
gzip/zlib frame around it is written here: gzip's CRC-32 is taken by each block's worker and
combined here (crc32_combine), zlib's Adler-32 here as the data goes by.

What compression cannot shrink (CRIU's pages of encrypted, compressed or random memory) goes out
as deflate's stored blocks (RFC 1951, 3.2.4) and costs a copy instead of a compression: a 4 KiB
sample of every 256 KiB is compressed first, and a segment whose sample does not shrink is stored.

Each block is handed to a worker as given (a memoryview of a mapped file stays one, no copy), so
a caller must not change a buffer it wrote until close() returns or the blocks are written out;
what is stored goes to `out` as views of it too.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from isal import isal_zlib

BLOCK = 1 << 20
WINDOW = 32 * 1024  # deflate's window: how far back a block's dictionary reaches
SEGMENT = 256 * 1024  # how finely stored and compressed data are told apart
SAMPLE = 4096
STORED_AT = 0.97  # a sample compressing to more than this fraction of itself is stored
_STORED_MAX = 0xFFFF  # the most bytes one stored block holds
_SMALL = 64 * 1024  # writes smaller than this are gathered into one block
_END = isal_zlib.compress(b"", wbits=-15)  # the final (empty) block


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) or 1


def _stored(data: memoryview) -> list:
    """data as deflate stored blocks, not final (each starts on the byte boundary a sync flush leaves)."""
    parts: list = []
    for off in range(0, len(data), _STORED_MAX):
        piece = data[off:off + _STORED_MAX]
        parts.append(struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF))
        parts.append(piece)
    return parts


def _incompressible(segment: memoryview, level: int) -> bool:
    sample = segment[:SAMPLE]
    return len(isal_zlib.compress(sample, level, wbits=-15)) > len(sample) * STORED_AT


def _deflate(data: memoryview, zdict: bytes, level: int) -> list:
    """One block as raw deflate ending on a byte boundary, in pieces to write one after the other
    (stored data stays a view of `data`: joining them would copy it into fresh memory, and each
    block's fresh memory costs page faults); zdict: the 32 KiB of input before it."""
    runs: list[list] = []  # [start, end, stored]: segments of the same kind joined
    for start in range(0, len(data), SEGMENT):
        end = min(start + SEGMENT, len(data))
        stored = _incompressible(data[start:end], level)
        if runs and runs[-1][2] == stored:
            runs[-1][1] = end
        else:
            runs.append([start, end, stored])
    parts: list = []
    for start, end, stored in runs:
        run = data[start:end]
        if not stored:
            before = bytes(data[start - WINDOW:start]) if start else zdict
            packer = (isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=before) if before
                      else isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15))
            packed = [packer.compress(run), packer.flush(isal_zlib.Z_SYNC_FLUSH)]
            if len(packed[0]) + len(packed[1]) < len(run):
                parts += packed
                continue
        parts.extend(_stored(run))
    return parts


def _block(data: memoryview, zdict: bytes, level: int, crc: bool) -> tuple[list, int]:
    """A worker's job: the block deflated, and its CRC-32 (gzip's check; 0 when not asked)."""
    return _deflate(data, zdict, level), isal_zlib.crc32(data) if crc else 0


class ParallelDeflateWriter:
    """A write-only stream of one gzip member (fmt "gzip") or one zlib stream (fmt "zlib").

    write() returns once a block is queued; compressed blocks are written to `out` in order from
    the thread that writes. close() finishes the stream (it does not close `out`); abort() stops
    the workers and leaves the stream unfinished.
    """

    def __init__(self, out: BinaryIO, fmt: str, level: int, threads: int = 0):
        if fmt not in ("gzip", "zlib"):
            raise ValueError(f"unknown deflate framing {fmt!r}")
        self._out = out
        self._fmt = fmt
        self._level = level
        threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="deflate")
        self._queued: deque[tuple[Future, int]] = deque()  # a block's job, and its length
        self._depth = 2 * threads  # blocks in flight before write() waits for the oldest
        self._gathered = bytearray()
        self._window = b""
        self._check = zlib.crc32(b"") if fmt == "gzip" else zlib.adler32(b"")
        self._size = 0
        self.closed = False
        if fmt == "gzip":  # RFC 1952: deflate, no name, mtime, XFL 4 (fastest), OS 3 (Unix)
            out.write(struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, int(time.time()), 4, 3))
        else:  # RFC 1950: deflate, 32 KiB window, FLEVEL 0 (fastest)
            out.write(b"\x78\x01")

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        if n < _SMALL:
            self._gathered += view
            if len(self._gathered) >= BLOCK:
                self._flush_gathered()
            return n
        self._flush_gathered()
        for off in range(0, n, BLOCK):
            self._submit(view[off:off + BLOCK])
        return n

    def _flush_gathered(self) -> None:
        if self._gathered:
            block = bytes(self._gathered)
            self._gathered.clear()
            self._submit(memoryview(block))

    def _submit(self, block: memoryview) -> None:
        gzip = self._fmt == "gzip"  # gzip's CRC-32 is taken by the workers, zlib's Adler-32 here
        if not gzip:
            self._check = isal_zlib.adler32(block, self._check)
        self._size += len(block)
        zdict = self._window
        self._window = (bytes(block[-WINDOW:]) if len(block) >= WINDOW
                        else (self._window + bytes(block))[-WINDOW:])
        self._queued.append((self._pool.submit(_block, block, zdict, self._level, gzip), len(block)))
        while len(self._queued) > self._depth:
            self._emit(self._queued.popleft())

    def _emit(self, queued: tuple[Future, int]) -> None:
        parts, crc = queued[0].result()
        if self._fmt == "gzip":
            self._check = isal_zlib.crc32_combine(self._check, crc, queued[1])
        write = self._out.write
        for part in parts:
            write(part)

    def close(self) -> None:
        """Write what is queued and the stream's end; out stays open."""
        if self.closed:
            return
        try:
            self._flush_gathered()
            while self._queued:
                self._emit(self._queued.popleft())
            self._out.write(_END)
            if self._fmt == "gzip":
                self._out.write(struct.pack("<II", self._check, self._size & 0xFFFFFFFF))
            else:
                self._out.write(struct.pack(">I", self._check))
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop the workers; what was not written yet is dropped."""
        self.closed = True
        for queued, _ in self._queued:
            queued.cancel()
        self._queued.clear()
        self._pool.shutdown(wait=True)
