"""The mount's tree: jobs, their checkpoints and the files in them, over the catalog and the store.

This module is what the filesystem *is*; cedanafs.fuse.operations only translates FUSE requests
into calls here (the split of borg's fuse.py/vfs.py). Nothing here imports pyfuse3, so the whole
tree is tested by calling these methods.

    /jobs/<job>/<checkpoint>/<files>     sealed checkpoints come from the catalog (read-only)
    /jobs/<job>/latest -> <checkpoint>   the newest sealed checkpoint
    mkdir /jobs/<job>/<name>             a pending checkpoint: files stream into the store as written
    setxattr user.cedana.seal            seals it: the manifest is committed through the catalog

Inode numbers of catalog nodes are derived from (parent inode, name), like restic's, so they are
the same after a remount; attributes come from the manifest, so they are stable too. The tree is
refreshed from the catalog at most every `refresh_interval` seconds and rebuilt only on change.

Thread-safe: one lock guards the tree and is never held across store I/O, except for the rare
metadata commits (seal, delete), which take a per-checkpoint lock instead.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, NamedTuple, Protocol

from ..catalog import FileEntry, Manifest, is_valid_checkpoint_name, is_valid_job_name, make_manifest
from ..errors import AlreadyExists, CedanaError, CheckpointError, NotFound
from ..types import FileContent
from .pending import Data, PendingContent, read_content

log = logging.getLogger(__name__)

ROOT_INODE = 1
LATEST = "latest"
INVENTORY = "inventory.img"
XATTR_PREFIX = "user.cedana."
XATTR_SEAL = "user.cedana.seal"
XATTR_STATE = "user.cedana.state"
XATTR_ERROR = "user.cedana.error"
XATTR_AUTOSEAL = "user.cedana.autoseal"
XATTR_STREAMS = "user.cedana.streams"  # pending checkpoint: uploads in flight per file (--streams)
XATTR_KIND = "user.cedana.kind"
XATTR_META = "user.cedana.meta."
XATTR_PID = "user.cedana.pid"
# Keys of Manifest.meta the mount owns: what a directory listing needs to be stable after sealing.
META_MOUNT = "mount"

PENDING, SEALING, SEALED, DELETED = "pending", "sealing", "sealed", "deleted"
# Manifest.meta keys naming the checkpoint's owner (the dumped process's real uid/gid, or the
# writer's for imports): the same on every machine that reads the manifest.
META_UID, META_GID = "uid", "gid"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def access_of(manifest: Manifest, entry: FileEntry | None, default: tuple[int, int]) -> tuple[int, int, int]:
    """(mode, uid, gid) in the mount of a sealed checkpoint's dir (entry None) or of one of its files.

    A checkpoint is the memory of a process: it belongs to the uid recorded in its manifest (else
    to the writer recorded by the mount, else to `default`), and only that owner (and root) may
    list or read it: directories 0700, files 0600 (0700 when the writer made them executable).
    """
    uid, gid = _owner_of(manifest, default)
    if entry is None:
        return stat.S_IFDIR | PRIVATE_DIR, uid, gid
    return stat.S_IFREG | PRIVATE_FILE | (entry.mode & 0o100), uid, gid


def _owner_of(manifest: Manifest, default: tuple[int, int]) -> tuple[int, int]:
    meta = manifest.meta
    try:
        if META_UID in meta:
            return int(meta[META_UID]), int(meta.get(META_GID, meta[META_UID]))
    except (TypeError, ValueError):
        log.warning("checkpoint %s: bad owner %r; shown as root's", manifest.name, meta.get(META_UID))
        return 0, 0
    mount_meta = meta.get(META_MOUNT)
    pair = mount_meta.get("dir_owner") if isinstance(mount_meta, dict) else None
    if isinstance(pair, list) and len(pair) == 2:
        return int(pair[0]), int(pair[1])
    return default


class FsError(Exception):
    """A request the tree refuses: an errno for the kernel and a sentence for the log."""

    def __init__(self, err: int, message: str = ""):
        self.errno = err
        super().__init__(message or os.strerror(err))


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


class CatalogView(Protocol):
    """What the tree needs of cedanafs.catalog.Catalog."""

    def refresh(self, max_age: float = 0.0) -> Any: ...
    def checkpoints(self, job: str | None = None) -> list[Any]: ...
    def load(self, job: str, checkpoint_id: str) -> Manifest: ...
    def commit(self, manifest: Manifest) -> Manifest: ...
    def delete(self, job: str, checkpoint_id: str) -> None: ...


def derive_inode(parent: int, name: str) -> int:
    """A stable inode number for `name` in `parent`: 63 bits of a hash, never 0 or the root's."""
    digest = hashlib.blake2b(parent.to_bytes(8, "little") + os.fsencode(name), digest_size=8).digest()
    ino = int.from_bytes(digest, "little") >> 1  # 63 bits: some tools read inode numbers as signed
    return ino if ino > ROOT_INODE else ino + 2


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


# --- nodes ------------------------------------------------------------------------------------

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
    """A checkpoint: sealed (from a manifest, loaded on first use) or pending (being written)."""

    __slots__ = ("job", "state", "manifest", "loaded", "op_lock", "last_change", "changes",
                 "autoseal", "kind", "meta", "error", "failed_change", "data")

    def __init__(self, *args: Any, job: str, state: str, **kw: Any):
        super().__init__(*args, **kw)
        self.job, self.state = job, state
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

    def __init__(self, *args: Any, entry: FileEntry | None = None, pending: PendingContent | None = None,
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


# --- the tree ---------------------------------------------------------------------------------

class VFS:
    """The mount's tree over a catalog (which checkpoints exist) and the store (their bytes)."""

    def __init__(self, catalog: CatalogView, data: Data, *, spill_dir: str | None = None,
                 refresh_interval: float = 2.0, autoseal_after: float = 10.0, uid: int | None = None,
                 gid: int | None = None, clock: Callable[[], float] = time.monotonic, host: str = ""):
        self._catalog, self._data = catalog, data
        self.host = host or socket.gethostname()  # recorded in the manifests this mount commits
        self._spill_dir = spill_dir
        self.refresh_interval = refresh_interval
        self.autoseal_after = autoseal_after
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._clock = clock
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._refreshed_at: float | None = None
        self._listing: dict[str, list[tuple[str, int]]] | None = None
        self._nodes: dict[int, Node] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._salt = itertools.count(1)
        self._broken: dict[str, str] = {}  # chunk digest -> why it cannot be read
        self.root = self._add(DirNode(ROOT_INODE, "", None, stat.S_IFDIR | 0o755, 0, self._uid, self._gid))
        self.jobs = self._add_child(self.root, DirNode, "jobs", stat.S_IFDIR | 0o755)

    # --- node bookkeeping -------------------------------------------------------------------

    def _add(self, node: Node) -> Any:
        self._nodes[node.inode] = node
        return node

    def _add_child(self, parent: DirNode, cls: type, name: str, mode: int, inode: int | None = None,
                   **kw: Any) -> Any:
        node = cls(inode or derive_inode(parent.inode, name), name, parent, mode, kw.pop("mtime_ns", 0),
                   kw.pop("uid", self._uid), kw.pop("gid", self._gid), **kw)
        parent.children[name] = node
        return self._add(node)

    def _drop(self, node: Node) -> None:
        """Take a node (and what is under it) out of the tree; open handles keep their own reference."""
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
        for sub in list(getattr(node, "children", {}).values()):
            self._drop(sub)
        if self._nodes.get(node.inode) is node:
            del self._nodes[node.inode]

    def _node(self, inode: int) -> Node:
        try:
            return self._nodes[inode]
        except KeyError:
            raise FsError(errno.ENOENT, f"no inode {inode}") from None

    def _dir(self, inode: int) -> DirNode:
        node = self._node(inode)
        if not isinstance(node, DirNode):
            raise FsError(errno.ENOTDIR)
        return node

    def _child(self, parent: DirNode, name: str) -> Node:
        try:
            return parent.children[name]
        except KeyError:
            raise FsError(errno.ENOENT, f"no {name!r} in inode {parent.inode}") from None

    @staticmethod
    def checkpoint_of(node: Node) -> CheckpointDir | None:
        while node is not None and not isinstance(node, CheckpointDir):
            node = node.parent
        return node

    # --- refresh from the catalog --------------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Sync the tree with the catalog if the last sync is older than refresh_interval.

        Returns whether the tree changed. Cheap when nothing changed: one listing of the store.
        """
        now = self._clock()
        if not force and self._refreshed_at is not None and now - self._refreshed_at < self.refresh_interval:
            return False
        if not self._refresh_lock.acquire(blocking=force):
            return False  # another thread is refreshing right now; its answer is fresh enough
        try:
            self._catalog.refresh()
            listing: dict[str, list[tuple[str, int]]] = {}
            for info in self._catalog.checkpoints():  # newest first
                listing.setdefault(info.job, []).append((info.id, _ns(info.created)))
            self._refreshed_at = now
            if listing == self._listing:
                return False
            with self._lock:
                self._apply_listing(listing)
                self._listing = listing
            return True
        finally:
            self._refresh_lock.release()

    def _apply_listing(self, listing: dict[str, list[tuple[str, int]]]) -> None:
        for job, entries in listing.items():
            jobdir = self.jobs.children.get(job)
            if not isinstance(jobdir, JobDir):
                jobdir = self._add_child(self.jobs, JobDir, job, stat.S_IFDIR | PRIVATE_DIR, local=False)
            for cid, created_ns in entries:
                if cid not in jobdir.children:
                    self._add_child(jobdir, CheckpointDir, cid, stat.S_IFDIR | PRIVATE_DIR, mtime_ns=created_ns,
                                    job=job, state=SEALED)
        for job, jobdir in list(self.jobs.children.items()):
            listed = {cid for cid, _ in listing.get(job, [])}
            for name, child in list(jobdir.children.items()):
                if isinstance(child, CheckpointDir) and child.state == SEALED and name not in listed:
                    log.info("checkpoint %s/%s is gone from the store", job, name)
                    self._drop(child)
            self._update_job(jobdir, listing.get(job, []))

    def _update_job(self, jobdir: JobDir, entries: list[tuple[str, int]]) -> None:
        """Point `latest` at the newest sealed checkpoint; drop a job left with nothing in it."""
        link = jobdir.children.get(LATEST)
        sealed = [(cid, ns) for cid, ns in entries
                  if isinstance(jobdir.children.get(cid), CheckpointDir) and jobdir.children[cid].state == SEALED]
        if link is not None and (not sealed or link.target != sealed[0][0]):
            self._drop(link)
            link = None
        if sealed and link is None:
            self._add_child(jobdir, LinkNode, LATEST, stat.S_IFLNK | 0o777, mtime_ns=sealed[0][1],
                            target=sealed[0][0])
        jobdir.mtime_ns = max([ns for _, ns in entries] + [jobdir.mtime_ns])
        self.jobs.mtime_ns = self.root.mtime_ns = max(self.jobs.mtime_ns, jobdir.mtime_ns)
        if not jobdir.children and not jobdir.local:
            self._drop(jobdir)

    def _relink(self, jobdir: JobDir) -> None:
        """Recompute `latest` after a local seal or delete, from the checkpoints in the tree."""
        entries = [(c.name, c.mtime_ns) for c in jobdir.children.values()
                   if isinstance(c, CheckpointDir) and c.state == SEALED]
        listed = dict((self._listing or {}).get(jobdir.name, []))
        # Newest first, as the catalog orders them: by creation time, then by id.
        entries.sort(key=lambda e: (listed.get(e[0], e[1]), e[0]), reverse=True)
        self._update_job(jobdir, [(cid, listed.get(cid, ns)) for cid, ns in entries])

    # --- loading sealed checkpoints --------------------------------------------------------------

    def _ensure_loaded(self, node: Node) -> None:
        """Fill a sealed checkpoint's files from its manifest (store I/O, outside the tree lock)."""
        if isinstance(node, JobDir):
            self._own_job(node)
            return
        ckpt = node if isinstance(node, CheckpointDir) else None
        if ckpt is None or ckpt.loaded:
            return
        try:
            manifest = self._catalog.load(ckpt.job, ckpt.id)
        except NotFound:
            raise FsError(errno.ENOENT, f"checkpoint {ckpt.job}/{ckpt.id} is gone") from None
        with self._lock:
            if not ckpt.loaded:
                self._fill_sealed(ckpt, manifest)

    def _fill_sealed(self, ckpt: CheckpointDir, manifest: Manifest,
                     aliases: dict[str, FileNode] | None = None) -> None:
        mount_meta = manifest.meta.get(META_MOUNT, {}) if isinstance(manifest.meta.get(META_MOUNT), dict) else {}
        ckpt.manifest, ckpt.loaded, ckpt.state = manifest, True, SEALED
        ckpt.mode, ckpt.uid, ckpt.gid = access_of(manifest, None, (self._uid, self._gid))
        ckpt.mtime_ns = int(mount_meta.get("dir_mtime_ns", _ns(manifest.created)))
        for entry in manifest.files:
            if entry.type != "file" or "/" in entry.path:
                log.warning("checkpoint %s: entry %r (%s) is not shown in the mount",
                            manifest.name, entry.path, entry.type)
                continue
            mode, uid, gid = access_of(manifest, entry, (self._uid, self._gid))
            node = self._add_child(ckpt, FileNode, entry.path, mode,
                                   mtime_ns=entry.mtime_ns, uid=uid, gid=gid, entry=entry)
            if aliases and entry.path in aliases:
                # The kernel may still know the file by its pending inode number; keep that working.
                self._nodes[aliases[entry.path].inode] = node

    def _own_job(self, jobdir: JobDir) -> None:
        """A job dir belongs to the owner of its newest checkpoint, and to that owner alone."""
        with self._lock:
            link = jobdir.children.get(LATEST)
            newest = jobdir.children.get(link.target) if isinstance(link, LinkNode) else None
        if not isinstance(newest, CheckpointDir):
            return
        self._ensure_loaded(newest)
        with self._lock:
            jobdir.mode, jobdir.uid, jobdir.gid = stat.S_IFDIR | PRIVATE_DIR, newest.uid, newest.gid

    # --- lookups --------------------------------------------------------------------------------

    def _maybe_refresh(self, node: Node) -> None:
        if node is self.root or node is self.jobs or isinstance(node, JobDir):
            try:
                self.refresh()
            except (CedanaError, OSError) as exc:
                # Serve the tree we have: a store that is down for a moment must not turn every
                # `ls` into EIO. Wait a full interval before asking it again.
                self._refreshed_at = self._clock()
                log.warning("cannot refresh the tree from the store (showing what is known): %s", exc)

    def lookup(self, parent: int, name: str) -> Attr:
        with self._lock:
            node = self._dir(parent)
        self._maybe_refresh(node)
        self._ensure_loaded(node)
        with self._lock:
            if name == ".":
                child: Node = node
            elif name == "..":
                child = node.parent or node
            else:
                child = self._child(node, name)
        self._ensure_loaded(child)
        return child.attr()

    def getattr(self, inode: int) -> Attr:
        with self._lock:
            node = self._node(inode)
        self._ensure_loaded(node)
        return node.attr()

    def readdir(self, inode: int) -> list[tuple[str, Attr]]:
        """The entries of a directory, sorted by name (so offsets are stable between calls)."""
        with self._lock:
            node = self._dir(inode)
        self._maybe_refresh(node)
        self._ensure_loaded(node)
        with self._lock:
            children = sorted(node.children.items())
        for _, child in children:
            self._ensure_loaded(child)
        return [(name, child.attr()) for name, child in children]

    def readlink(self, inode: int) -> str:
        with self._lock:
            node = self._node(inode)
        if not isinstance(node, LinkNode):
            raise FsError(errno.EINVAL)
        return node.target

    def path_of(self, inode: int) -> str:
        """`/jobs/j/c/file` of an inode, for messages."""
        with self._lock:
            node, parts = self._node(inode), []
            while node is not None and node.parent is not None:
                parts.append(node.name)
                node = node.parent
        return "/" + "/".join(reversed(parts))

    # --- making things --------------------------------------------------------------------------

    def mkdir(self, parent: int, name: str, mode: int, uid: int = 0, gid: int = 0) -> Attr:
        with self._lock:
            node = self._dir(parent)
            if name in node.children:
                raise FsError(errno.EEXIST)
            now = time.time_ns()
            if node is self.jobs:
                if not is_valid_job_name(name):
                    raise FsError(errno.EINVAL, f"invalid job name {name!r}")
                child = self._add_child(node, JobDir, name, stat.S_IFDIR | (mode & PRIVATE_DIR), mtime_ns=now,
                                        uid=uid, gid=gid, local=True)
            elif isinstance(node, JobDir):
                if not _checkpoint_dir_name(name):
                    raise FsError(errno.EINVAL, f"invalid checkpoint name {name!r}")
                child = self._add_child(node, CheckpointDir, name, stat.S_IFDIR | (mode & PRIVATE_DIR),
                                        mtime_ns=now, uid=uid, gid=gid, job=node.name, state=PENDING)
                child.data = self._data.session() if hasattr(self._data, "session") else self._data
                self._touch(child)
                log.info("pending checkpoint %s/%s created", node.name, name)
            elif isinstance(node, CheckpointDir):
                raise FsError(errno.EROFS if node.state != PENDING else errno.EPERM,
                              "a checkpoint holds files only")
            else:
                raise FsError(errno.EPERM, "only jobs/ can hold new directories")
            return child.attr()

    def create(self, parent: int, name: str, mode: int, flags: int, uid: int = 0, gid: int = 0) -> tuple[int, Attr]:
        with self._lock:
            ckpt = self._writable_dir(parent)
            node = ckpt.children.get(name)
            if node is not None:
                if flags & os.O_EXCL:
                    raise FsError(errno.EEXIST)
                if not isinstance(node, FileNode):
                    raise FsError(errno.EISDIR)
            else:
                # Pending files get a fresh number each: a name can be reused after a rename.
                inode = derive_inode(ckpt.inode, f"{name}\0{next(self._salt)}")
                node = self._add_child(ckpt, FileNode, name, stat.S_IFREG | (mode & PRIVATE_DIR), inode=inode,
                                       mtime_ns=time.time_ns(), uid=uid, gid=gid,
                                       pending=PendingContent(ckpt.data, self._spill_dir))
            self._touch(ckpt)
        return self._open_node(node, flags | os.O_WRONLY), node.attr()

    def _writable_dir(self, inode: int) -> CheckpointDir:
        node = self._dir(inode)
        if not isinstance(node, CheckpointDir):
            raise FsError(errno.EPERM, "files go in a checkpoint directory: jobs/<job>/<checkpoint>/")
        self._check_pending(node)
        return node

    @staticmethod
    def _check_pending(ckpt: CheckpointDir) -> None:
        if ckpt.state == SEALING:
            raise FsError(errno.EBUSY, f"checkpoint {ckpt.job}/{ckpt.id} is being sealed")
        if ckpt.state != PENDING:
            raise FsError(errno.EROFS, f"checkpoint {ckpt.job}/{ckpt.id} is sealed and read-only")

    def _touch(self, ckpt: CheckpointDir) -> None:
        ckpt.last_change = self._clock()
        ckpt.changes += 1
        ckpt.mtime_ns = time.time_ns()

    # --- open files -----------------------------------------------------------------------------

    def open(self, inode: int, flags: int) -> int:
        with self._lock:
            node = self._node(inode)
        if isinstance(node, DirNode):
            raise FsError(errno.EISDIR)
        if not isinstance(node, FileNode):
            raise FsError(errno.EINVAL)
        return self._open_node(node, flags)

    def _open_node(self, node: FileNode, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        with self._lock:
            if writable or flags & os.O_TRUNC:
                ckpt = self.checkpoint_of(node)
                self._check_pending(ckpt)
                if node.pending is None:
                    raise FsError(errno.EROFS)
                if flags & os.O_TRUNC:
                    node.pending.truncate(0)
                    node.mtime_ns = time.time_ns()
                    self._touch(ckpt)
            handle = Handle(next(self._fh), node, writable)
            node.opens += 1
            self._handles[handle.fh] = handle
            return handle.fh

    def _handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def is_immutable(self, fh: int) -> bool:
        """Whether the kernel may keep this file's cached pages: only sealed content never changes."""
        return self._handle(fh).node.pending is None

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self._handle(fh)
        node = handle.node
        if node.pending is not None:
            return node.pending.read(offset, size)
        content = node.entry.content or FileContent(size=0, inline=b"")
        self._check_broken(content, offset, size)
        if handle.reader is None and content.inline is None:
            handle.reader = self._data.reader(content)
        try:
            return read_content(self._data, content, offset, size, lambda _c: handle.reader)
        except CedanaError as exc:
            self._remember_broken(exc, node)
            ckpt = self.checkpoint_of(node)
            if ckpt is not None:  # why reads of it fail, for its user.cedana.error (restores name it)
                ckpt.error = f"{node.name}: {exc}"
            raise

    def _check_broken(self, content: FileContent, offset: int, size: int) -> None:
        """Refuse at once a read that needs a chunk already found corrupt: never refetch it in a loop."""
        if not self._broken or content.inline is not None:
            return
        pos = 0
        for ref in content.chunks:
            if pos >= offset + size:
                break
            if pos + ref.size > offset and ref.digest in self._broken:
                raise FsError(errno.EIO, self._broken[ref.digest])
            pos += ref.size

    def _remember_broken(self, exc: Exception, node: FileNode) -> None:
        digest = getattr(exc, "digest", None)
        if digest and digest not in self._broken:
            self._broken[digest] = str(exc)
            log.error("%s: %s (further reads of this chunk fail at once)", self._path_locked(node), exc)

    def _path_locked(self, node: Node) -> str:
        parts = []
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        node = handle.node
        if not handle.writable:
            raise FsError(errno.EBADF)
        with self._lock:
            ckpt = self.checkpoint_of(node)
            self._check_pending(ckpt)
            node.mtime_ns = time.time_ns()
            ckpt.last_change = self._clock()
        return node.pending.write(offset, data)

    def flush(self, fh: int) -> None:
        """On close(): finish the file when this is its only open handle, so close() reports errors."""
        handle = self._handle(fh)
        node = handle.node
        if handle.writable and node.pending is not None and node.opens == 1 and not node.unlinked:
            node.pending.finish()

    def fsync(self, fh: int) -> None:
        # Pending bytes are not meant to survive a crash (the checkpoint is discarded), so there
        # is nothing to force here; sealing is what makes a checkpoint durable.
        self._handle(fh)

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is None:
                return
            if handle.reader is not None:
                handle.reader.close()  # cancels its readahead
            node = handle.node
            node.opens -= 1
            last = node.opens == 0
        if not last or node.pending is None:
            return
        if node.unlinked:
            node.pending.discard()
            return
        try:
            node.pending.finish()
        except Exception as exc:  # noqa: BLE001 - release cannot report; sealing will fail on it
            ckpt = self.checkpoint_of(node)
            ckpt.error = f"{node.name}: {exc}"
            log.error("cannot store %s: %s", self.path_of(node.inode), exc)

    # --- changing things ------------------------------------------------------------------------

    def setattr(self, inode: int, *, mode: int | None = None, size: int | None = None,
                mtime_ns: int | None = None, uid: int | None = None, gid: int | None = None) -> Attr:
        with self._lock:
            node = self._node(inode)
        self._ensure_loaded(node)
        with self._lock:
            sealed = getattr(self.checkpoint_of(node), "state", None) == SEALED
            if mode is not None and sealed and (mode & 0o700) == (node.mode & 0o700):
                # A sealed checkpoint is its owner's alone: group/other bits stay clear, and a
                # chmod that only asks for them (`rsync -a` into it again) changes nothing.
                mode = None
            if mode is not None:
                mode = (node.mode & ~0o7777) | (mode & 0o7777)
            changes = {k: v for k, v in (("mode", mode), ("mtime_ns", mtime_ns), ("uid", uid), ("gid", gid))
                       if v is not None and getattr(node, k) != v}
            resize = size is not None and not (isinstance(node, FileNode) and node.size == size)
            if not changes and not resize:
                return node.attr()  # a no-op is fine anywhere, even on sealed checkpoints
            ckpt = self.checkpoint_of(node)
            if ckpt is None:
                raise FsError(errno.EPERM, "only files and checkpoint directories can be changed")
            self._check_pending(ckpt)
            if resize:
                if not isinstance(node, FileNode):
                    raise FsError(errno.EISDIR)
                node.pending.truncate(size)
                node.mtime_ns = time.time_ns()
            for key, value in changes.items():
                setattr(node, key, value)
            if node is not ckpt:
                self._touch(ckpt)
            else:
                # The directory's own times were set (rsync does it last): keep them, count the change.
                ckpt.last_change = self._clock()
                ckpt.changes += 1
            return node.attr()

    def rename(self, old_parent: int, old_name: str, new_parent: int, new_name: str, flags: int = 0) -> None:
        with self._lock:
            src, dst = self._dir(old_parent), self._dir(new_parent)
            node = self._child(src, old_name)
            for d in (src, dst):
                if isinstance(d, CheckpointDir):
                    self._check_pending(d)
            if flags & RENAME_EXCHANGE:
                raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
            if src is not dst:
                raise FsError(errno.EXDEV, "files move only within one checkpoint")
            if isinstance(node, FileNode) and isinstance(src, CheckpointDir):
                self._rename_file(src, node, new_name, flags)
            elif isinstance(node, CheckpointDir) and node.state == PENDING:
                self._rename_file(src, node, new_name, flags)
            else:
                raise FsError(errno.EPERM if not isinstance(node, CheckpointDir) else errno.EROFS)

    def _rename_file(self, parent: DirNode, node: Node, new_name: str, flags: int) -> None:
        if isinstance(node, CheckpointDir) and not _checkpoint_dir_name(new_name):
            raise FsError(errno.EINVAL, f"invalid checkpoint name {new_name!r}")
        target = parent.children.get(new_name)
        if target is node:
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if isinstance(target, CheckpointDir) and target.state != PENDING:
                raise FsError(errno.EEXIST)
            if type(target) is not type(node) or (isinstance(target, DirNode) and target.children):
                raise FsError(errno.EEXIST if isinstance(target, DirNode) else errno.EISDIR)
            self._unlink_pending(target)
        del parent.children[node.name]
        node.name = new_name
        parent.children[new_name] = node
        if isinstance(parent, CheckpointDir):
            self._touch(parent)

    def unlink(self, parent: int, name: str) -> None:
        with self._lock:
            ckpt = self._dir(parent)
            node = self._child(ckpt, name)
            if isinstance(node, DirNode):
                raise FsError(errno.EISDIR)
            if not isinstance(ckpt, CheckpointDir):
                raise FsError(errno.EPERM, f"{name} is maintained by the mount")
            if ckpt.state == SEALING:
                raise FsError(errno.EBUSY)
            state = ckpt.state
        if state == SEALED:
            self._delete_sealed(ckpt)
        with self._lock:
            if ckpt.children.get(name) is node:
                if ckpt.state == PENDING:
                    self._unlink_pending(node)
                    self._touch(ckpt)
                else:
                    self._drop(node)

    def _unlink_pending(self, node: Node) -> None:
        if isinstance(node, FileNode) and node.pending is not None:
            node.unlinked = True
            if node.opens == 0:
                node.pending.discard()
        self._drop(node)

    def _delete_sealed(self, ckpt: CheckpointDir) -> None:
        """Remove a sealed checkpoint from the catalog (its chunks go at the next GC).

        Deleting any file of a sealed checkpoint deletes the checkpoint: a sealed checkpoint is
        whole or not at all. Its remaining names stay visible (read-only) until `rm -r` has
        unlinked them and removed the directory.
        """
        with ckpt.op_lock:
            if ckpt.state != SEALED:
                return
            try:
                self._catalog.delete(ckpt.job, ckpt.id)
            except NotFound:
                pass  # deleted elsewhere meanwhile: the same outcome
            with self._lock:
                ckpt.state = DELETED
                if self._listing and ckpt.job in self._listing:
                    self._listing[ckpt.job] = [e for e in self._listing[ckpt.job] if e[0] != ckpt.id]
                if isinstance(ckpt.parent, JobDir):
                    # Keep the job dir while `rm -r` works through it, as any filesystem would.
                    ckpt.parent.local = True
                    self._relink(ckpt.parent)
        log.info("checkpoint %s/%s deleted", ckpt.job, ckpt.id)

    def rmdir(self, parent: int, name: str) -> None:
        with self._lock:
            node = self._child(self._dir(parent), name)
        if not isinstance(node, DirNode):
            raise FsError(errno.ENOTDIR)
        self._ensure_loaded(node)
        with self._lock:
            if isinstance(node, CheckpointDir):
                if node.children:
                    raise FsError(errno.ENOTEMPTY)
                if node.state == SEALING:
                    raise FsError(errno.EBUSY)
                state = node.state
            elif isinstance(node, JobDir):
                if any(isinstance(c, CheckpointDir) for c in node.children.values()):
                    raise FsError(errno.ENOTEMPTY)
                state = None
            else:
                raise FsError(errno.EPERM)
        if state == SEALED:
            self._delete_sealed(node)
        if state == PENDING:
            self._end_session(node)
        with self._lock:
            self._drop(node)
            if isinstance(node, JobDir) and self._listing:
                self._listing.pop(node.name, None)

    # --- sealing ----------------------------------------------------------------------------------

    def seal(self, inode: int, kind: str | None = None) -> Manifest:
        """Commit a pending checkpoint: finish its files, write its manifest; it turns read-only."""
        with self._lock:
            ckpt = self._node(inode)
        if not isinstance(ckpt, CheckpointDir):
            raise FsError(errno.EINVAL, "only a checkpoint directory can be sealed")
        with ckpt.op_lock:
            if ckpt.state == SEALED:
                self._ensure_loaded(ckpt)
                return ckpt.manifest  # sealing twice is harmless
            files = self._begin_seal(ckpt)
            try:
                manifest = self._commit(ckpt, files, kind or ckpt.kind)
            except BaseException as exc:
                with self._lock:
                    ckpt.state = PENDING
                    ckpt.error = str(exc)
                    ckpt.failed_change = ckpt.changes
                raise
            with self._lock:
                aliases = {n.name: n for n in files}
                for node in files:
                    self._drop(node)
                self._fill_sealed(ckpt, manifest, aliases)
                ckpt.error = ""
                if self._listing is not None:
                    self._listing.setdefault(ckpt.job, []).insert(0, (ckpt.id, _ns(manifest.created)))
                jobdir = ckpt.parent
                jobdir.local = False
                self._relink(jobdir)
            self._end_session(ckpt)
        log.info("checkpoint %s sealed: %d files, %d bytes", manifest.name, len(manifest.files), manifest.size)
        return manifest

    def _begin_seal(self, ckpt: CheckpointDir) -> list[FileNode]:
        with self._lock:
            if ckpt.state != PENDING:
                raise FsError(errno.EROFS if ckpt.state == DELETED else errno.EBUSY)
            if INVENTORY not in ckpt.children:
                ckpt.error = f"no CRIU images in {ckpt.job}/{ckpt.id}: {INVENTORY} is missing"
                ckpt.failed_change = ckpt.changes
                raise FsError(errno.EINVAL, ckpt.error)
            files = [n for n in ckpt.children.values() if isinstance(n, FileNode)]
            busy = [n.name for n in files if n.opens and not n.pending.finished]
            if busy:
                ckpt.error = f"{busy[0]} in {ckpt.job}/{ckpt.id} is still open for writing"
                raise FsError(errno.EBUSY, ckpt.error)
            ckpt.state = SEALING
            return files

    def _commit(self, ckpt: CheckpointDir, files: list[FileNode], kind: str) -> Manifest:
        entries, owners = [], {}
        for node in files:  # store I/O: the last bytes of each file become durable here
            content = node.pending.finish()
            entries.append(FileEntry(path=node.name, type="file", mode=node.mode & 0o7777,
                                     mtime_ns=node.mtime_ns, content=content))
            if (node.uid, node.gid) != (self._uid, self._gid):
                owners[node.name] = [node.uid, node.gid]
        mount_meta: dict[str, Any] = {"dir_mode": ckpt.mode & 0o7777, "dir_mtime_ns": ckpt.mtime_ns}
        if owners:
            mount_meta["owners"] = owners
        if (ckpt.uid, ckpt.gid) != (self._uid, self._gid):
            mount_meta["dir_owner"] = [ckpt.uid, ckpt.gid]
        # The owner: as the dumper said (the process's uid), else whoever made the directory.
        owner = {META_UID: str(ckpt.uid), META_GID: str(ckpt.gid)}
        manifest = make_manifest(ckpt.job, ckpt.id, entries, kind=kind, host=self.host,
                                 meta={**owner, **ckpt.meta, META_MOUNT: mount_meta},
                                 created=datetime.now(timezone.utc))
        return self._catalog.commit(manifest)

    def autoseal_due(self) -> list[int]:
        """Pending checkpoints the import rule seals now (see docs/mount.md).

        A pending checkpoint is sealed when it holds inventory.img, none of its files is open,
        nothing in it changed for `autoseal_after` seconds, and the last attempt did not fail on
        this same content.
        """
        if self.autoseal_after <= 0:
            return []
        now = self._clock()
        with self._lock:
            return [c.inode for c in self._pending_checkpoints()
                    if c.autoseal and not c.name.startswith(".") and INVENTORY in c.children
                    and c.failed_change != c.changes
                    and now - c.last_change >= self.autoseal_after
                    and not any(isinstance(f, FileNode) and f.opens for f in c.children.values())]

    def _pending_checkpoints(self) -> Iterator[CheckpointDir]:
        for jobdir in self.jobs.children.values():
            for child in jobdir.children.values():
                if isinstance(child, CheckpointDir) and child.state == PENDING:
                    yield child

    # --- extended attributes: the control surface ---------------------------------------------

    def getxattr(self, inode: int, name: str) -> bytes:
        with self._lock:
            node = self._node(inode)
            if node is self.root and name == XATTR_PID:
                return str(os.getpid()).encode()  # how `cedana umount` finds the server to wait for
            ckpt = self.checkpoint_of(node)
            if ckpt is None or not name.startswith(XATTR_PREFIX):
                raise FsError(errno.ENODATA)
            if name == XATTR_STATE:
                return ckpt.state.encode()
            if name == XATTR_ERROR and ckpt.error:
                return ckpt.error.encode()
            if name == XATTR_AUTOSEAL:
                return b"1" if ckpt.autoseal else b"0"
            if name == XATTR_KIND:
                return (ckpt.manifest.kind if ckpt.manifest else ckpt.kind).encode()
            if name.startswith(XATTR_META):
                meta = ckpt.manifest.meta if ckpt.manifest else ckpt.meta
                value = meta.get(name[len(XATTR_META):])
                if isinstance(value, str):
                    return value.encode()
            raise FsError(errno.ENODATA)

    def listxattr(self, inode: int) -> list[str]:
        with self._lock:
            node = self._node(inode)
            return [XATTR_STATE] if isinstance(node, CheckpointDir) else []

    def setxattr(self, inode: int, name: str, value: bytes) -> None:
        with self._lock:
            ckpt = self._node(inode)
            if not isinstance(ckpt, CheckpointDir) or not name.startswith(XATTR_PREFIX):
                raise FsError(errno.ENOTSUP)
            if name == XATTR_SEAL:
                pass
            elif ckpt.state != PENDING:
                raise FsError(errno.EROFS)
            elif name == XATTR_AUTOSEAL:
                ckpt.autoseal = value.strip() not in (b"0", b"no", b"false", b"off")
                return
            elif name == XATTR_STREAMS:
                try:
                    streams = int(value)
                except ValueError:
                    raise FsError(errno.EINVAL, f"{name} must be a number") from None
                if streams < 0 or not hasattr(ckpt.data, "streams"):
                    raise FsError(errno.EINVAL, f"{name} must be >= 0")
                ckpt.data.streams = streams or None
                return
            elif name == XATTR_KIND and value:
                ckpt.kind = value.decode(errors="replace")
                return
            elif name.startswith(XATTR_META) and len(name) > len(XATTR_META):
                ckpt.meta[name[len(XATTR_META):]] = value.decode(errors="replace")
                return
            else:
                raise FsError(errno.ENOTSUP)
        self.seal(inode)

    # --- whole-mount ------------------------------------------------------------------------------

    def forget(self, inode: int) -> None:
        """The kernel dropped an inode: forget pending-file aliases that outlived their seal."""
        with self._lock:
            node = self._nodes.get(inode)
            if node is not None and node.inode != inode:
                del self._nodes[inode]

    def close(self) -> None:
        """At unmount: discard what was never sealed (it must not survive, see docs/mount.md)."""
        with self._lock:
            pending = list(self._pending_checkpoints())
        for ckpt in pending:
            log.warning("discarding unsealed checkpoint %s/%s", ckpt.job, ckpt.id)
            for node in list(ckpt.children.values()):
                if isinstance(node, FileNode) and node.pending is not None:
                    node.pending.discard()
            self._end_session(ckpt)

    @staticmethod
    def _end_session(ckpt: CheckpointDir) -> None:
        data, ckpt.data = ckpt.data, None
        if data is not None and hasattr(data, "close"):
            try:
                data.close()
            except Exception as exc:  # noqa: BLE001 - a lease left behind expires by itself
                log.warning("checkpoint %s/%s: cannot end its store session: %s", ckpt.job, ckpt.id, exc)


def _checkpoint_dir_name(name: str) -> bool:
    """A checkpoint name, or a hidden temporary one (`.name.partial`, as mkdtemp makes) that a
    writer renames to its final name before sealing; hidden names are never sealed."""
    return is_valid_checkpoint_name(name[1:] if name.startswith(".") else name)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def errno_of(exc: BaseException) -> int:
    """The errno a failure means to a FUSE caller: the one place domain errors become errnos."""
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AlreadyExists):
        return errno.EEXIST
    if isinstance(exc, CheckpointError) and "invalid manifest" in str(exc):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
