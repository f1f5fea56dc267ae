"""Reading what CRIU's images say about the dumped tree, without restoring it.

pycriu's generic image decoder does not work with current protobuf releases, so the one image
we need (pstree.img: a magic header, then length-prefixed PstreeEntry messages) is read here.
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
    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: tuple[int, ...]


def read_pstree(images_dir: str) -> list[TreeEntry]:
    """The dumped process tree, root first."""
    from pycriu.images import pstree_pb2  # generated messages work; only the decoder is broken

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
            msg = pstree_pb2.pstree_entry()
            msg.ParseFromString(data[offset + 4 : offset + 4 + size])
            entries.append(TreeEntry(msg.pid, msg.ppid, msg.pgid, msg.sid, tuple(msg.threads)))
            offset += 4 + size
    except Exception as exc:  # struct.error or protobuf DecodeError on a damaged image
        raise CheckpointError(f"{path}: damaged CRIU image ({exc})") from None
    if not entries:
        raise CheckpointError(f"{path}: empty process tree")
    return entries


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


def _messages(path: str, first, rest) -> tuple[object, list]:
    with open(path, "rb") as f:
        data = f.read()
    offset = 8 if struct.unpack_from("<I", data, 0)[0] in _COMMON_MAGICS else 4
    out, cls = [], first
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        msg = cls()
        msg.ParseFromString(data[offset + 4 : offset + 4 + size])
        out.append(msg)
        offset += 4 + size
        cls = rest
    return (out[0] if out else None), out[1:]


def read_pagemap(images_dir: str, pid: int) -> tuple[str, list[PageRange]]:
    """Where pid's pages lie in its pages image: (file name, ranges in file order).

    Ranges that CRIU restores at once (not lazy) are what a lazy restore reads before the
    process runs; the lazy ones arrive later through `criu lazy-pages`.
    """
    from pycriu.images import pagemap_pb2

    path = os.path.join(images_dir, f"pagemap-{pid}.img")
    try:
        head, entries = _messages(path, pagemap_pb2.pagemap_head, pagemap_pb2.pagemap_entry)
    except FileNotFoundError:
        raise CheckpointError(f"{images_dir}: no pagemap for pid {pid}") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: damaged CRIU image ({exc})") from None
    if head is None:
        raise CheckpointError(f"{path}: empty pagemap")
    ranges, pos = [], 0
    for e in entries:
        if e.flags & PE_PRESENT or not (e.flags & (PE_PARENT | PE_LAZY)) and not e.in_parent:
            length = e.nr_pages * PAGE_SIZE
            ranges.append(PageRange(pos, length, bool(e.flags & PE_LAZY)))
            pos += length
    return f"pages-{head.pages_id}.img", ranges
