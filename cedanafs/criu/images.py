"""Reading what CRIU's images say about the dumped tree, without restoring it.

pycriu's generic image decoder does not work with current protobuf releases, so the one image
we need (pstree.img: a magic header, then length-prefixed PstreeEntry messages) is read here,
its five integer fields decoded by hand: importing protobuf and pycriu's generated messages
would cost every restore a tenth of a second before CRIU even starts.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import CheckpointError
from ..types import PAGE_SIZE

# CRIU image headers start with one of these before the per-image magic (criu/include/magic.h).
_COMMON_MAGICS = {0x54564319, 0x55105940}


@dataclass(frozen=True)
class TreeEntry:
    """One process of the dumped tree, as pstree.img has it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


def read_pstree(images_dir: str) -> list[TreeEntry]:
    """The dumped process tree, root first."""
    path = os.path.join(images_dir, "pstree.img")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{images_dir}: not a CRIU images directory (no pstree.img)") from None
    try:
        offset = 8 if struct.unpack_from("<I", data, 0)[0] in _COMMON_MAGICS else 4
        entries = []
        while offset < len(data):
            (size,) = struct.unpack_from("<I", data, offset)
            end = offset + 4 + size
            if end > len(data):
                raise ValueError("truncated entry")
            entries.append(_pstree_entry(data, offset + 4, end))
            offset = end
    except (struct.error, ValueError, IndexError) as exc:  # a damaged image
        raise CheckpointError(f"{path}: damaged CRIU image ({exc})") from None
    if not entries:
        raise CheckpointError(f"{path}: empty process tree")
    return entries


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
        if shift > 63:
            raise ValueError("varint too long")


def _pstree_entry(data: bytes, pos: int, end: int) -> TreeEntry:
    """One PstreeEntry message: pid = 1, ppid = 2, pgid = 3, sid = 4, threads = 5 (repeated)."""
    fields, threads = _fields(data, pos, end, repeated=5)
    return TreeEntry(fields.get(1, 0), fields.get(2, 0), fields.get(3, 0), fields.get(4, 0), tuple(threads))


def _fields(data: bytes, pos: int, end: int, repeated: int = 0) -> tuple[dict[int, int], list[int]]:
    """The integer fields of one protobuf message (what CRIU's image entries we read hold):
    {field number: last value}, and the values of field `repeated` (packed or not). Fields of
    other wire types are skipped."""
    fields: dict[int, int] = {}
    values: list[int] = []
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            if number == repeated:
                values.append(value)
            else:
                fields[number] = value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if number == repeated:
                inner = pos
                while inner < pos + length:
                    value, inner = _varint(data, inner)
                    values.append(value)
            pos += length
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("a message overruns its length")
    return fields, values


def image_pids(images_dir: str) -> list[int]:
    """Every pid and thread id the restore will need, root first."""
    pids: list[int] = []
    for entry in read_pstree(images_dir):
        pids.append(entry.pid)
        pids += [t for t in entry.threads if t != entry.pid]
    return pids


# pagemap entry flags (criu/include/pagemap.h)
PE_PARENT, PE_LAZY, PE_PRESENT = 1 << 0, 1 << 1, 1 << 2


@dataclass(frozen=True)
class PageRange:
    """A run of pages in pages-<id>.img: its byte offset and length there, and whether it is lazy."""

    offset: int
    length: int
    lazy: bool


def _messages(path: str) -> list[dict[int, int]]:
    """The integer fields of each length-prefixed message of an image file (after its magic)."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 8 if struct.unpack_from("<I", data, 0)[0] in _COMMON_MAGICS else 4
    out = []
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        end = offset + 4 + size
        if end > len(data):
            raise ValueError("truncated entry")
        out.append(_fields(data, offset + 4, end)[0])
        offset = end
    return out


def read_pagemap(images_dir: str, pid: int) -> tuple[str, list[PageRange]]:
    """Where pid's pages lie in its pages image: (file name, ranges in file order).

    Ranges that CRIU restores at once (not lazy) are what a lazy restore reads before the
    process runs; the lazy ones arrive later through `criu lazy-pages`.
    """
    path = os.path.join(images_dir, f"pagemap-{pid}.img")
    try:
        messages = _messages(path)
    except FileNotFoundError:
        raise CheckpointError(f"{images_dir}: no pagemap for pid {pid}") from None
    except (struct.error, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: damaged CRIU image ({exc})") from None
    if not messages:
        raise CheckpointError(f"{path}: empty pagemap")
    # pagemap_head: pages_id = 1; pagemap_entry: vaddr = 1, compat_nr_pages = 2, in_parent = 3,
    # flags = 4, nr_pages = 5.
    head, entries = messages[0], messages[1:]
    ranges, pos = [], 0
    for e in entries:
        flags = e.get(4, 0)
        if flags & PE_PRESENT or not (flags & (PE_PARENT | PE_LAZY)) and not e.get(3, 0):
            length = e.get(5, 0) * PAGE_SIZE
            ranges.append(PageRange(pos, length, bool(flags & PE_LAZY)))
            pos += length
    return f"pages-{head.get(1, 0)}.img", ranges
