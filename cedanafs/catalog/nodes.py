"""The nodes of the mount's tree: what a job, a checkpoint, a file and `latest` are, as data.

This module owns the node types (with `__slots__`, like borg's vfs), their attributes (`Attr`,
independent of FUSE), the derived inode numbers and the checkpoint states. A checkpoint moves
pending -> sealing -> sealed (-> deleted); a failed seal goes back to pending. Nothing here does
I/O or takes a lock: cedanafs.catalog.tree owns both.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from .manifest import FileEntry, Manifest

ROOT_INODE = 1
LATEST = "latest"
PENDING, SEALING, SEALED, DELETED = "pending", "sealing", "sealed", "deleted"


class Attr(NamedTuple):
    """What stat shows of a node, independent of FUSE."""

    inode: int
    mode: int  # including the S_IF* type bits
    size: int
    mtime_ns: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    immutable: bool = False  # sealed content: the kernel may cache it for long


class PendingFile(Protocol):
    """The bytes of a file being written (cedanafs.streamer.pending.PendingContent has these)."""

    size: int

    @property
    def finished(self) -> bool: ...
    def write(self, offset: int, data: bytes) -> int: ...
    def read(self, offset: int, size: int) -> bytes: ...
    def truncate(self, size: int) -> None: ...
    def finish(self) -> Any: ...
    def discard(self) -> None: ...


def derive_inode(parent: int, name: str) -> int:
    """A stable inode number for `name` in `parent`: 63 bits of a hash, never 0 or the root's."""
    digest = hashlib.blake2b(parent.to_bytes(8, "little") + os.fsencode(name), digest_size=8).digest()
    ino = int.from_bytes(digest, "little") >> 1  # 63 bits: some tools read inode numbers as signed
    return ino if ino > ROOT_INODE else ino + 2


def ns_of(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


class Node:
    __slots__ = ("inode", "name", "parent", "mode", "mtime_ns", "uid", "gid")

    def __init__(self, inode: int, name: str, parent: "DirNode | None", mode: int, mtime_ns: int = 0,
                 uid: int = 0, gid: int = 0):
        self.inode, self.name, self.parent = inode, name, parent
        self.mode, self.mtime_ns, self.uid, self.gid = mode, mtime_ns, uid, gid

    def attr(self) -> Attr:
        return Attr(self.inode, self.mode, 0, self.mtime_ns, 1, self.uid, self.gid)


class DirNode(Node):
    __slots__ = ("children",)

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.children: dict[str, Node] = {}

    def attr(self) -> Attr:
        subdirs = sum(1 for c in self.children.values() if isinstance(c, DirNode))
        return Attr(self.inode, self.mode, 0, self.mtime_ns, 2 + subdirs, self.uid, self.gid)


class JobDir(DirNode):
    __slots__ = ("local",)

    def __init__(self, *args: Any, local: bool, **kw: Any):
        super().__init__(*args, **kw)
        self.local = local  # made by mkdir here, not (yet) known to the catalog


class CheckpointDir(DirNode):
    """A checkpoint: sealed (from a manifest, loaded on first use) or pending (being written).

    `commit` names the one commit a sealed checkpoint stands for (its manifest's nonce): a name
    deleted and committed again elsewhere is a different checkpoint, with other inode numbers.
    """

    __slots__ = ("job", "state", "commit", "manifest", "loaded", "op_lock", "last_change", "changes",
                 "autoseal", "kind", "meta", "error", "failed_change", "data")

    def __init__(self, *args: Any, job: str, state: str, commit: str = "", **kw: Any):
        super().__init__(*args, **kw)
        self.job, self.state, self.commit = job, state, commit
        self.manifest: Manifest | None = None
        self.loaded = state != SEALED
        self.op_lock = threading.Lock()  # one seal or delete at a time
        self.last_change = 0.0
        self.changes = 0
        self.autoseal = True
        self.kind = "process"
        self.meta: dict[str, Any] = {}
        self.error = ""
        self.failed_change = -1
        self.data: Any = None  # pending: the store session its files are written through

    @property
    def id(self) -> str:
        return self.name


class FileNode(Node):
    __slots__ = ("entry", "pending", "opens", "unlinked")

    def __init__(self, *args: Any, entry: FileEntry | None = None, pending: PendingFile | None = None,
                 **kw: Any):
        super().__init__(*args, **kw)
        self.entry, self.pending = entry, pending
        self.opens = 0
        self.unlinked = False

    @property
    def size(self) -> int:
        return self.pending.size if self.pending is not None else self.entry.size

    def attr(self) -> Attr:
        return Attr(self.inode, self.mode, self.size, self.mtime_ns, 1, self.uid, self.gid,
                    immutable=self.pending is None)


class LinkNode(Node):
    __slots__ = ("target",)

    def __init__(self, *args: Any, target: str, **kw: Any):
        super().__init__(*args, **kw)
        self.target = target

    def attr(self) -> Attr:
        return Attr(self.inode, self.mode, len(os.fsencode(self.target)), self.mtime_ns, 1, self.uid, self.gid)


@dataclass
class Handle:
    """An open file: its node and, for sealed files, the store reader (with its readahead state)."""

    fh: int
    node: FileNode
    writable: bool
    reader: Any = None


@dataclass(frozen=True)
class Status:
    """What the control surface shows of a checkpoint (a snapshot taken under the tree lock)."""

    state: str
    error: str
    autoseal: bool
    kind: str
    meta: dict[str, Any]
    progress: dict[str, int] | None = None  # an ingest running into it: total, read, done, stored


def checkpoint_of(node: Node | None) -> CheckpointDir | None:
    while node is not None and not isinstance(node, CheckpointDir):
        node = node.parent
    return node
