"""Reading what CRIU's images say about the dumped tree, without restoring it.

pycriu's generic image decoder does not work with current protobuf releases, so the one image
we need (pstree.img: a magic header, then length-prefixed PstreeEntry messages) is read here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import CheckpointError

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
