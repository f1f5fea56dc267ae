"""The checkpoint lifecycle of the mount's tree: pending -> sealing -> sealed -> deleted.

This module owns what happens to a checkpoint directory as a whole: sealing it (its files'
last bytes made durable, then the manifest committed through the catalog's one builder,
`Catalog.commit_files`), the autoseal rule for imports, deleting a sealed one, the controls a
writer sets on a pending one (`configure`), what the control surface shows (`status`), and
discarding what was never sealed at unmount; and the protocols by which the tree holds the
catalog and the store's sessions. `Lifecycle` is a part of cedanafs.catalog.tree.Tree (which owns
the nodes and the lock); store I/O here always runs with the tree lock released.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Protocol

from ..errors import CedanaError, FsError, NotFound
from ..types import FileContent
from .access import META_GID, META_UID
from .manifest import FileEntry, Manifest
from .nodes import (DELETED, PENDING, SEALED, SEALING, CheckpointDir, DirNode, FileNode, JobDir, PendingFile,
                    Status, checkpoint_of, ns_of)

log = logging.getLogger(__name__)

INVENTORY = "inventory.img"
# Keys of Manifest.meta the mount owns: what a directory listing needs to be stable after sealing.
META_MOUNT = "mount"


class CatalogView(Protocol):
    """What the tree needs of cedanafs.catalog.Catalog."""

    def refresh(self, max_age: float = 0.0) -> Any: ...
    def checkpoints(self, job: str | None = None) -> list[Any]: ...
    def load(self, job: str, checkpoint_id: str, commit: str = "") -> Manifest: ...
    def commit_files(self, job: str, files: Iterable[FileEntry], **kw: Any) -> Manifest: ...
    def delete(self, job: str, checkpoint_id: str) -> None: ...


class Session(Protocol):
    """The store session of one pending checkpoint (cedanafs.streamer.session.StoreSession)."""

    streams: int | None
    progress: Any  # a running ingest's counters, None when none ran

    def new_file(self) -> PendingFile: ...
    def finished_file(self, content: FileContent) -> PendingFile: ...
    def ingest(self, path: str) -> FileContent: ...
    def ingest_dir(self, source: str, follow: bool = False) -> list: ...
    def reused_gone(self) -> set[str]: ...
    def prepare_commit(self) -> None: ...
    def close(self) -> None: ...


class Data(Protocol):
    """What the tree needs of the streamer: sessions for pending checkpoints, readers for sealed files."""

    def session(self) -> Session: ...
    def reader(self, content: FileContent) -> Any: ...
    def materialize(self, content: FileContent, path: str, mode: int) -> int: ...
    def write_to(self, content: FileContent, fd: int) -> int: ...
    def compaction(self) -> dict[str, int | bool]: ...


class Lifecycle:
    """Seal, autoseal, delete, controls and status of the tree's checkpoints.

    A part of Tree, not a class of its own: it uses the tree's lock and node bookkeeping
    (`_node`, `_drop`, `_add_sealed`, `_fill_sealed`, `_ensure_loaded`, `_relink`).
    """

    _lock: threading.RLock
    _catalog: CatalogView
    _data: Data
    _clock: Callable[[], float]
    _listing: dict[str, list[tuple[str, int, str]]] | None
    _uid: int
    _gid: int
    host: str
    autoseal_after: float
    jobs: DirNode

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
                manifest = self._commit(ckpt, files, kind or ckpt.kind)  # store I/O, tree unlocked
            except BaseException as exc:
                with self._lock:
                    ckpt.state = PENDING
                    ckpt.error = str(exc)
                    ckpt.failed_change = ckpt.changes
                raise
            with self._lock:
                self._finish_seal(ckpt, files, manifest)
            end_session(ckpt)
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
        started = time.monotonic()
        ckpt.data.prepare_commit()  # new chunks durable, reused ones safe from GC (streamer.gc)
        log.debug("checkpoint %s/%s: chunks durable after %.3f s", ckpt.job, ckpt.id, time.monotonic() - started)
        # The owner: as the dumper said (the process's uid), else whoever made the directory.
        owner = {META_UID: str(ckpt.uid), META_GID: str(ckpt.gid)}
        return self._catalog.commit_files(ckpt.job, entries, name=ckpt.id, kind=kind, host=self.host,
                                          meta={**owner, **ckpt.meta, META_MOUNT: mount_meta},
                                          created=datetime.now(timezone.utc))

    def _finish_seal(self, ckpt: CheckpointDir, files: list[FileNode], manifest: Manifest) -> None:
        """Swap the pending directory for the sealed one (lock held); the kernel may still know the
        pending inode numbers, so they stay aliases of the sealed nodes until it forgets them."""
        jobdir = ckpt.parent
        commit = manifest.commit
        for node in files:
            self._drop(node)
        self._drop(ckpt)
        sealed = self._add_sealed(jobdir, ckpt.id, commit, ns_of(manifest.created))
        self._fill_sealed(sealed, manifest)
        self._nodes[ckpt.inode] = sealed
        for node in files:
            alias = sealed.children.get(node.name)
            if alias is not None:
                self._nodes[node.inode] = alias
        ckpt.state, ckpt.manifest = SEALED, manifest  # for handles that still hold the old node
        if self._listing is not None:
            entries = [e for e in self._listing.get(ckpt.job, []) if e[0] != ckpt.id]
            self._listing[ckpt.job] = [(ckpt.id, ns_of(manifest.created), commit)] + entries
        jobdir.local = False
        self._relink(jobdir)

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

    def compaction(self) -> dict[str, int | bool]:
        """The store's chunks still to be compressed after their commit (no I/O)."""
        return self._data.compaction()

    def status(self, inode: int) -> Status:
        """The state of the checkpoint that holds `inode` (ENODATA outside checkpoints)."""
        with self._lock:
            ckpt = checkpoint_of(self._node(inode))
            if ckpt is None:
                raise FsError(errno.ENODATA)
            manifest = ckpt.manifest
            progress = getattr(ckpt.data, "progress", None) if ckpt.state == PENDING else None
            return Status(state=ckpt.state, error=ckpt.error, autoseal=ckpt.autoseal,
                          kind=manifest.kind if manifest else ckpt.kind,
                          meta=dict(manifest.meta if manifest else ckpt.meta),
                          progress=dict(vars(progress)) if progress is not None else None)

    def is_checkpoint(self, inode: int) -> bool:
        with self._lock:
            return isinstance(self._node(inode), CheckpointDir)

    def configure(self, inode: int, *, autoseal: bool | None = None, streams: int | None = None,
                  kind: str | None = None, meta: tuple[str, str] | None = None) -> None:
        """Change how a pending checkpoint is written or sealed (EROFS once it is not pending)."""
        with self._lock:
            ckpt = self._node(inode)
            if not isinstance(ckpt, CheckpointDir):
                raise FsError(errno.ENOTSUP)
            if ckpt.state != PENDING:
                raise FsError(errno.EROFS)
            if streams is not None:
                if streams < 0:
                    raise FsError(errno.EINVAL, "streams must be >= 0")
                ckpt.data.streams = streams or None
            if autoseal is not None:
                ckpt.autoseal = autoseal
            if kind:
                ckpt.kind = kind
            if meta is not None:
                ckpt.meta[meta[0]] = meta[1]

    def close(self) -> None:
        """At unmount: discard what was never sealed (it must not survive, see docs/mount.md)."""
        with self._lock:
            pending = list(self._pending_checkpoints())
            files = {c.inode: [n.pending for n in c.children.values()
                               if isinstance(n, FileNode) and n.pending is not None] for c in pending}
        for ckpt in pending:
            log.warning("discarding unsealed checkpoint %s/%s", ckpt.job, ckpt.id)
            discard(files[ckpt.inode])
            end_session(ckpt)


def check_pending(ckpt: CheckpointDir) -> None:
    if ckpt.state == SEALING:
        raise FsError(errno.EBUSY, f"checkpoint {ckpt.job}/{ckpt.id} is being sealed")
    if ckpt.state != PENDING:
        raise FsError(errno.EROFS, f"checkpoint {ckpt.job}/{ckpt.id} is sealed and read-only")


def discard(files: list[PendingFile]) -> None:
    for pending in files:
        pending.discard()


def end_session(ckpt: CheckpointDir) -> None:
    data, ckpt.data = ckpt.data, None
    if data is not None:
        try:
            data.close()
        except CedanaError as exc:  # a lease left behind expires by itself
            log.warning("checkpoint %s/%s: cannot end its store session: %s", ckpt.job, ckpt.id, exc)
