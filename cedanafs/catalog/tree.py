"""The mount's tree: jobs, their checkpoints and the files in them, and the checkpoint lifecycle.

This module is what the filesystem *is*; cedanafs.fuse only translates FUSE requests into calls
here (the split of borg's fuse.py/vfs.py). It owns the tree synced from the catalog, `latest`,
lookups, and the names and bytes of files in pending checkpoints; the lifecycle of a checkpoint
as a whole (seal, autoseal, delete, controls) is its part in cedanafs.catalog.lifecycle. The
bytes come from the streamer through the `Data` protocol (cedanafs.streamer.session.StoreSession
has it); this module imports neither the streamer nor pyfuse3, so the whole tree is tested by
calling it.

    /jobs/<job>/<checkpoint>/<files>     sealed checkpoints come from the catalog (read-only)
    /jobs/<job>/latest -> <checkpoint>   the newest sealed checkpoint
    mkdir /jobs/<job>/<name>             a pending checkpoint: files stream into the store as written
    seal(inode)                          commits it: the manifest is committed through the catalog

Inode numbers are derived from (parent inode, name), like restic's, so they are the same after a
remount and on every machine; a sealed checkpoint's also from its commit, so a name deleted and
committed again is a new directory with new files to the kernel, never old cached bytes.
Attributes come from the manifest, so they are stable too. The tree is refreshed from the
catalog at most every `refresh_interval` seconds and rebuilt only on change.

Thread-safe: one lock guards the tree and is never held across store I/O (writer closes and
aborts, manifest loads and commits, listings); a seal or delete takes its checkpoint's own lock.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import stat
import threading
import time
from typing import Any, Callable

from ..errors import CedanaError, FsError, NotFound
from ..types import FileContent
from .ids import is_valid_checkpoint_name, is_valid_job_name
from .lifecycle import META_MOUNT, CatalogView, Data, Lifecycle, check_pending, discard, end_session
from .access import PRIVATE_DIR, access_of
from .manifest import Manifest
from .transfers import Transfers
from .nodes import (DELETED, LATEST, PENDING, ROOT_INODE, SEALED, SEALING, Attr, CheckpointDir, DirNode, FileNode, Handle,
                    JobDir, LinkNode, Node, PendingFile, checkpoint_of, derive_inode, ns_of)

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
Listing = dict[str, list[tuple[str, int, str]]]  # job -> [(id, created ns, commit)], newest first


class Tree(Transfers, Lifecycle):
    """The mount's tree over a catalog (which checkpoints exist) and the store (their bytes)."""

    def __init__(self, catalog: CatalogView, data: Data, *, refresh_interval: float = 2.0,
                 autoseal_after: float = 10.0, uid: int | None = None, gid: int | None = None,
                 clock: Callable[[], float] = time.monotonic, host: str = ""):
        self._catalog, self._data = catalog, data
        self.host = host or socket.gethostname()  # recorded in the manifests this mount commits
        self.refresh_interval = refresh_interval
        self.autoseal_after = autoseal_after
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._clock = clock
        self._lock = threading.RLock()
        self._refresh_lock = threading.Lock()
        self._refreshed_at: float | None = None
        self._listing: Listing | None = None
        self._nodes: dict[int, Node] = {}
        self._handles: dict[int, Handle] = {}
        self._fh = itertools.count(1)
        self._salt = itertools.count(1)
        self.root = self._add(DirNode(ROOT_INODE, "", None, stat.S_IFDIR | 0o755, 0, self._uid, self._gid))
        self.jobs = self._add_child(self.root, DirNode, "jobs", stat.S_IFDIR | 0o755)

    # --- node bookkeeping (callers hold the lock) ---------------------------------------------

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

    @staticmethod
    def _child(parent: DirNode, name: str) -> Node:
        try:
            return parent.children[name]
        except KeyError:
            raise FsError(errno.ENOENT, f"no {name!r} in inode {parent.inode}") from None

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
            listing: Listing = {}
            for info in self._catalog.checkpoints():  # newest first
                listing.setdefault(info.job, []).append((info.id, ns_of(info.created), info.commit))
            self._refreshed_at = now
            with self._lock:
                if listing == self._listing:
                    return False
                self._apply_listing(listing)
                self._listing = listing
            return True
        finally:
            self._refresh_lock.release()

    def _apply_listing(self, listing: Listing) -> None:
        for job, entries in listing.items():
            jobdir = self.jobs.children.get(job)
            if not isinstance(jobdir, JobDir):
                jobdir = self._add_child(self.jobs, JobDir, job, stat.S_IFDIR | PRIVATE_DIR, local=False)
            for cid, created_ns, commit in entries:
                known = jobdir.children.get(cid)
                if isinstance(known, CheckpointDir) and known.state == SEALED and known.commit != commit:
                    log.info("checkpoint %s/%s was committed again elsewhere: showing the new one", job, cid)
                    self._drop(known)
                    known = None
                if known is None:
                    self._add_sealed(jobdir, cid, commit, created_ns)
        for job, jobdir in list(self.jobs.children.items()):
            listed = {cid for cid, _, _ in listing.get(job, [])}
            for name, child in list(jobdir.children.items()):
                if isinstance(child, CheckpointDir) and child.state == SEALED and name not in listed:
                    log.info("checkpoint %s/%s is gone from the store", job, name)
                    self._drop(child)
            self._update_job(jobdir, listing.get(job, []))

    def _add_sealed(self, jobdir: JobDir, cid: str, commit: str, created_ns: int) -> CheckpointDir:
        return self._add_child(jobdir, CheckpointDir, cid, stat.S_IFDIR | PRIVATE_DIR,
                               inode=derive_inode(jobdir.inode, f"{cid}\0{commit}"), mtime_ns=created_ns,
                               job=jobdir.name, state=SEALED, commit=commit)

    def _update_job(self, jobdir: JobDir, entries: list[tuple[str, int, str]]) -> None:
        """Point `latest` at the newest sealed checkpoint; drop a job left with nothing in it."""
        link = jobdir.children.get(LATEST)
        sealed = [(cid, ns) for cid, ns, _ in entries
                  if isinstance(jobdir.children.get(cid), CheckpointDir) and jobdir.children[cid].state == SEALED]
        if link is not None and (not sealed or link.target != sealed[0][0]):
            self._drop(link)
            link = None
        if sealed and link is None:
            self._add_child(jobdir, LinkNode, LATEST, stat.S_IFLNK | 0o777, mtime_ns=sealed[0][1],
                            target=sealed[0][0])
        jobdir.mtime_ns = max([ns for _, ns, _ in entries] + [jobdir.mtime_ns])
        self.jobs.mtime_ns = self.root.mtime_ns = max(self.jobs.mtime_ns, jobdir.mtime_ns)
        if not jobdir.children and not jobdir.local:
            self._drop(jobdir)

    def _relink(self, jobdir: JobDir) -> None:
        """Recompute `latest` after a local seal or delete, from the checkpoints in the tree."""
        listed = {cid: ns for cid, ns, _ in (self._listing or {}).get(jobdir.name, [])}
        entries = [(c.name, listed.get(c.name, c.mtime_ns), c.commit) for c in jobdir.children.values()
                   if isinstance(c, CheckpointDir) and c.state == SEALED]
        # Newest first, as the catalog orders them: by creation time, then by id.
        entries.sort(key=lambda e: (e[1], e[0]), reverse=True)
        self._update_job(jobdir, entries)

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
            manifest = self._catalog.load(ckpt.job, ckpt.id, ckpt.commit)  # this commit's, no other
        except NotFound:
            raise FsError(errno.ENOENT, f"checkpoint {ckpt.job}/{ckpt.id} is gone") from None
        with self._lock:
            if not ckpt.loaded:
                self._fill_sealed(ckpt, manifest)

    def _fill_sealed(self, ckpt: CheckpointDir, manifest: Manifest) -> None:
        mount_meta = manifest.meta.get(META_MOUNT, {}) if isinstance(manifest.meta.get(META_MOUNT), dict) else {}
        ckpt.manifest, ckpt.loaded, ckpt.state = manifest, True, SEALED
        ckpt.mode, ckpt.uid, ckpt.gid = access_of(manifest, None, (self._uid, self._gid))
        ckpt.mtime_ns = int(mount_meta.get("dir_mtime_ns", ns_of(manifest.created)))
        dirs: dict[str, DirNode] = {}
        for entry in sorted(manifest.files, key=lambda e: e.path):
            # Container checkpoints keep CRIU's images in a subdirectory: shown read-only, as stored.
            parent, _, name = entry.path.rpartition("/")
            where = dirs.get(parent) if parent else ckpt
            mode, uid, gid = access_of(manifest, entry, (self._uid, self._gid))
            if not isinstance(where, DirNode) or entry.type not in ("file", "dir", "symlink"):
                log.warning("checkpoint %s: entry %r (%s) is not shown in the mount",
                            manifest.name, entry.path, entry.type)
                continue
            if entry.type == "dir":
                dirs[entry.path] = self._add_child(where, DirNode, name, mode,
                                                   mtime_ns=entry.mtime_ns, uid=uid, gid=gid)
            elif entry.type == "symlink":
                self._add_child(where, LinkNode, name, stat.S_IFLNK | 0o777, mtime_ns=entry.mtime_ns,
                                uid=uid, gid=gid, target=entry.target or "")
            else:
                self._add_child(where, FileNode, name, mode,
                                mtime_ns=entry.mtime_ns, uid=uid, gid=gid, entry=entry)

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
            return _path(self._node(inode))

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
                child.data = self._data.session()  # no I/O: its lease is taken at the first write
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
                                       mtime_ns=time.time_ns(), uid=uid, gid=gid, pending=ckpt.data.new_file())
            self._touch(ckpt)
        return self._open_node(node, flags | os.O_WRONLY), node.attr()

    def _writable_dir(self, inode: int) -> CheckpointDir:
        node = self._dir(inode)
        if not isinstance(node, CheckpointDir):
            raise FsError(errno.EPERM, "files go in a checkpoint directory: jobs/<job>/<checkpoint>/")
        check_pending(node)
        return node

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
        truncate = bool(flags & os.O_TRUNC)
        with self._lock:
            if writable or truncate:
                check_pending(checkpoint_of(node))
                if node.pending is None:
                    raise FsError(errno.EROFS)
            handle = Handle(next(self._fh), node, writable)
            node.opens += 1  # counted before the truncate: a seal meanwhile sees the file busy
            self._handles[handle.fh] = handle
        if truncate:
            try:
                node.pending.truncate(0)  # store I/O (a streaming writer is aborted): not under the lock
            except BaseException:
                self.release(handle.fh)
                raise
            with self._lock:
                node.mtime_ns = time.time_ns()
                self._touch(checkpoint_of(node))
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
        if offset >= content.size or size <= 0:
            return b""
        if handle.reader is None:
            handle.reader = self._data.reader(content)
        try:
            return handle.reader.read(offset, min(size, content.size - offset))
        except CedanaError as exc:
            ckpt = checkpoint_of(node)
            if ckpt is not None:  # why reads of it fail, for its user.cedana.error (restores name it)
                ckpt.error = f"{node.name}: {exc}"
            raise

    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        node = handle.node
        if not handle.writable:
            raise FsError(errno.EBADF)
        with self._lock:
            ckpt = checkpoint_of(node)
            check_pending(ckpt)
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
            reader, handle.reader = handle.reader, None
            node = handle.node
            node.opens -= 1
            last = node.opens == 0
        if reader is not None:
            reader.close()  # cancels its readahead
        if not last or node.pending is None:
            return
        if node.unlinked:
            node.pending.discard()
            return
        try:
            node.pending.finish()
        except Exception as exc:  # noqa: BLE001 - release cannot report; sealing will fail on it
            ckpt = checkpoint_of(node)
            ckpt.error = f"{node.name}: {exc}"
            log.error("cannot store %s: %s", _path(node), exc)

    # --- changing things ------------------------------------------------------------------------

    def setattr(self, inode: int, *, mode: int | None = None, size: int | None = None,
                mtime_ns: int | None = None, uid: int | None = None, gid: int | None = None) -> Attr:
        with self._lock:
            node = self._node(inode)
        self._ensure_loaded(node)
        with self._lock:
            sealed = getattr(checkpoint_of(node), "state", None) == SEALED
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
            ckpt = checkpoint_of(node)
            if ckpt is None:
                raise FsError(errno.EPERM, "only files and checkpoint directories can be changed")
            check_pending(ckpt)
            if resize and not isinstance(node, FileNode):
                raise FsError(errno.EISDIR)
        if resize:
            node.pending.truncate(size)  # store I/O (the writer finishes into a spill file): unlocked
        with self._lock:
            check_pending(ckpt)
            if resize:
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
                    check_pending(d)
            if flags & RENAME_EXCHANGE:
                raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
            if src is not dst:
                raise FsError(errno.EXDEV, "files move only within one checkpoint")
            if isinstance(node, FileNode) and isinstance(src, CheckpointDir):
                replaced = self._rename_in(src, node, new_name, flags)
            elif isinstance(node, CheckpointDir) and node.state == PENDING:
                replaced = self._rename_in(src, node, new_name, flags)
            else:
                raise FsError(errno.EPERM if not isinstance(node, CheckpointDir) else errno.EROFS)
        discard(replaced)

    def _rename_in(self, parent: DirNode, node: Node, new_name: str, flags: int) -> list[PendingFile]:
        """Move `node` to `new_name` in its directory; returns the replaced bytes to discard, unlocked."""
        if isinstance(node, CheckpointDir) and not _checkpoint_dir_name(new_name):
            raise FsError(errno.EINVAL, f"invalid checkpoint name {new_name!r}")
        target = parent.children.get(new_name)
        if target is node:
            return []
        replaced: list[PendingFile] = []
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            if isinstance(target, CheckpointDir) and target.state != PENDING:
                raise FsError(errno.EEXIST)
            if type(target) is not type(node) or (isinstance(target, DirNode) and target.children):
                raise FsError(errno.EEXIST if isinstance(target, DirNode) else errno.EISDIR)
            replaced = self._unlink_pending(target)
        del parent.children[node.name]
        node.name = new_name
        parent.children[new_name] = node
        if isinstance(parent, CheckpointDir):
            self._touch(parent)
        return replaced

    def _sealed_owner(self, node: Node) -> CheckpointDir | None:
        """The sealed (or deleted) checkpoint a subdirectory of it belongs to: `rm -r` may empty it."""
        ckpt = checkpoint_of(node)
        return ckpt if ckpt is not None and ckpt is not node and ckpt.state in (SEALED, DELETED) else None

    def unlink(self, parent: int, name: str) -> None:
        with self._lock:
            where = self._dir(parent)
            node = self._child(where, name)
            if isinstance(node, DirNode):
                raise FsError(errno.EISDIR)
            ckpt = where if isinstance(where, CheckpointDir) else self._sealed_owner(where)
            if not isinstance(ckpt, CheckpointDir):
                raise FsError(errno.EPERM, f"{name} is maintained by the mount")
            if ckpt.state == SEALING:
                raise FsError(errno.EBUSY)
            state = ckpt.state
        if state == SEALED:
            self._delete_sealed(ckpt)
        replaced: list[PendingFile] = []
        with self._lock:
            if where.children.get(name) is node:
                if ckpt.state == PENDING:
                    replaced = self._unlink_pending(node)
                    self._touch(ckpt)
                else:
                    self._drop(node)
        discard(replaced)

    def _unlink_pending(self, node: Node) -> list[PendingFile]:
        """Take a pending file out of the tree (lock held); its bytes, unless open, to discard unlocked."""
        self._drop(node)
        if isinstance(node, FileNode) and node.pending is not None:
            node.unlinked = True
            if node.opens == 0:
                return [node.pending]
        return []

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
            elif self._sealed_owner(node) is not None:
                if node.children:
                    raise FsError(errno.ENOTEMPTY)
                state = "subdir"
            else:
                raise FsError(errno.EPERM)
        if state == "subdir":
            self._delete_sealed(self._sealed_owner(node))
        if state == SEALED:
            self._delete_sealed(node)
        if state == PENDING:
            end_session(node)
        with self._lock:
            self._drop(node)
            if isinstance(node, JobDir) and self._listing:
                self._listing.pop(node.name, None)

    # --- whole-mount ------------------------------------------------------------------------------

    def forget(self, inode: int) -> None:
        """The kernel dropped an inode: forget pending-file aliases that outlived their seal."""
        with self._lock:
            node = self._nodes.get(inode)
            if node is not None and node.inode != inode:
                del self._nodes[inode]

def _path(node: Node | None) -> str:
    parts = []
    while node is not None and node.parent is not None:
        parts.append(node.name)
        node = node.parent
    return "/" + "/".join(reversed(parts))


def _checkpoint_dir_name(name: str) -> bool:
    """A checkpoint name, or a hidden temporary one (`.name.partial`, as mkdtemp makes) that a
    writer renames to its final name before sealing; hidden names are never sealed."""
    return is_valid_checkpoint_name(name[1:] if name.startswith(".") else name)
