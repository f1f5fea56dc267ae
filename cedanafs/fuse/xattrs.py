"""The mount's control surface: the `user.cedana.*` extended attributes, as one table each way.

Reading one calls a getter over the checkpoint's `Status` (a snapshot, no I/O: the kernel asks
for xattrs before every write, on the event loop); writing one calls the tree (on a worker
thread: a seal is store I/O). A new control is one line in a table. `cedana` itself (app/mount.py)
sets and reads these names on paths in the mount.
"""

from __future__ import annotations

import errno
import json
import os
from typing import TYPE_CHECKING, Callable

from ..errors import FsError

if TYPE_CHECKING:  # the dump command reads the names here without loading the tree
    from ..catalog import Status, Tree

PREFIX = "user.cedana."
SEAL = PREFIX + "seal"
STATE = PREFIX + "state"
ERROR = PREFIX + "error"
AUTOSEAL = PREFIX + "autoseal"
STREAMS = PREFIX + "streams"  # pending checkpoint: uploads in flight per file (--streams)
KIND = PREFIX + "kind"
META = PREFIX + "meta."  # + a key of the manifest's meta
PID = PREFIX + "pid"  # on the root: the mount server's pid (how `cedana umount` waits for it)
# On the root: {"chunks", "bytes"} stored plain and still to be compressed after their commit.
COMPACTION = PREFIX + "compaction"
# Root only: a pending checkpoint takes a local dir's files (CRIU's spool) into the store and is
# sealed (-follow: while CRIU still writes them); a sealed one writes its files into a new local
# dir (eager restores read them there). Neither moves bytes through FUSE (catalog/transfers.py).
INGEST = PREFIX + "ingest"
INGEST_FOLLOW = PREFIX + "ingest-follow"
MATERIALIZE = PREFIX + "materialize"
# Root only, on a sealed checkpoint: serve its files to one `criu restore --stream` through a
# socket in the given local dir (fetched and decoded while CRIU restores; criu/stream.py).
SERVE = PREFIX + "serve"
PROGRESS = PREFIX + "progress"  # a running ingest: {"total", "read", "done", "stored"} bytes
ROOT_ONLY = {INGEST, INGEST_FOLLOW, MATERIALIZE, SERVE}


def _flag(value: bytes) -> bool:
    return value.strip() not in (b"0", b"no", b"false", b"off")


def _count(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise FsError(errno.EINVAL, "the value must be a number") from None


def _text(value: bytes) -> str:
    if not value:
        raise FsError(errno.ENOTSUP, "the value must not be empty")
    return value.decode(errors="replace")


GETTERS: dict[str, Callable[[Status], str | None]] = {
    STATE: lambda s: s.state,
    ERROR: lambda s: s.error or None,
    AUTOSEAL: lambda s: "1" if s.autoseal else "0",
    KIND: lambda s: s.kind,
    PROGRESS: lambda s: json.dumps(s.progress) if s.progress is not None else None,
}

SETTERS: dict[str, Callable[[Tree, int, bytes], object]] = {
    SEAL: lambda tree, ino, value: tree.seal(ino),
    AUTOSEAL: lambda tree, ino, value: tree.configure(ino, autoseal=_flag(value)),
    STREAMS: lambda tree, ino, value: tree.configure(ino, streams=_count(value)),
    KIND: lambda tree, ino, value: tree.configure(ino, kind=_text(value)),
    INGEST: lambda tree, ino, value: tree.ingest(ino, os.fsdecode(value)),
    INGEST_FOLLOW: lambda tree, ino, value: tree.ingest(ino, os.fsdecode(value), follow=True),
    MATERIALIZE: lambda tree, ino, value: tree.materialize(ino, os.fsdecode(value)),
    SERVE: lambda tree, ino, value: _serve(tree, ino, os.fsdecode(value)),
}


def _serve(tree: Tree, inode: int, images_dir: str) -> None:
    from ..criu import stream  # only the restores that ask for it need the protocol

    stream.serve(images_dir, tree.image_source(inode))


def get(tree: Tree, inode: int, name: str) -> bytes:
    """The value of control `name` on `inode` (ENODATA when it has none)."""
    if inode == tree.root.inode and name == PID:
        return str(os.getpid()).encode()
    if inode == tree.root.inode and name == COMPACTION:
        return json.dumps(tree.compaction()).encode()
    if not name.startswith(PREFIX):
        raise FsError(errno.ENODATA)
    status = tree.status(inode)
    if name.startswith(META):
        value = status.meta.get(name[len(META):])
    else:
        value = GETTERS[name](status) if name in GETTERS else None
    if not isinstance(value, str):
        raise FsError(errno.ENODATA)
    return value.encode()


def names(tree: Tree, inode: int) -> list[str]:
    return [STATE] if tree.is_checkpoint(inode) else []


def set(tree: Tree, inode: int, name: str, value: bytes, uid: int = 0) -> None:  # noqa: A001 - the xattr verb
    """Run control `name` on the checkpoint directory `inode` (ENOTSUP for anything else)."""
    if not tree.is_checkpoint(inode) or not name.startswith(PREFIX):
        raise FsError(errno.ENOTSUP)
    if name in ROOT_ONLY and uid != 0:
        raise FsError(errno.EPERM, f"only root may set {name}")
    if name in SETTERS:
        SETTERS[name](tree, inode, value)
    elif name.startswith(META) and len(name) > len(META):
        tree.configure(inode, meta=(name[len(META):], value.decode(errors="replace")))
    else:
        raise FsError(errno.ENOTSUP)
