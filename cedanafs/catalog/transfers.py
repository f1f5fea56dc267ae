"""Local directories into and out of the mount's tree without the FUSE data path.

A pending checkpoint takes in the files of a local spool directory that CRIU wrote (`ingest`,
optionally while CRIU still writes them) and is then sealed; a sealed checkpoint writes its
files into a new local directory (`materialize`) for an eager restore to read at local speed, or
hands them out one by one as a restore asks for them (`image_source`: CRIU reading from pipes the
mount server fills, fetching and decoding while CRIU restores). The bytes move in the store session (cedanafs.streamer.session, through the `Session` and
`Data` protocols); this part of the tree only adds the ingested files as nodes and keeps the
tree lock released during store I/O. A part of cedanafs.catalog.tree.Tree, like Lifecycle.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from typing import Any, Callable

from ..errors import CedanaError, CheckpointError, FsError
from ..spool import writer_alive
from ..types import FileContent
from .lifecycle import check_pending
from .manifest import Manifest
from .nodes import SEALED, CheckpointDir, FileNode, derive_inode

log = logging.getLogger(__name__)


class Transfers:
    """ingest and materialize of the tree's checkpoints (see the module docstring)."""

    _lock: threading.RLock
    _data: Any
    _salt: Any

    def ingest(self, inode: int, source: str, follow: bool = False) -> Manifest:
        """Take the regular files of local dir `source` into pending checkpoint `inode`, then seal
        it (`follow`: while CRIU still writes them, see cedanafs.streamer.ingest)."""
        with self._lock:
            ckpt = self._node(inode)  # type: ignore[attr-defined]
            if not isinstance(ckpt, CheckpointDir):
                raise FsError(errno.EINVAL, "only a checkpoint directory can ingest files")
            check_pending(ckpt)
            if getattr(ckpt.data, "progress", None) is not None:
                raise FsError(errno.EBUSY, f"checkpoint {ckpt.job}/{ckpt.id} is already ingesting")
        try:
            started = time.monotonic()
            ingested = ckpt.data.ingest_dir(source, follow)  # store I/O, outside the tree lock
            log.debug("checkpoint %s/%s: %s taken in after %.3f s", ckpt.job, ckpt.id, source,
                      time.monotonic() - started)
            ingested = self._reingest_gone(ckpt, source, ingested)
            if not writer_alive(source, every=0):  # nobody is left to finish the dump's protocol
                raise CheckpointError(f"the dump writing {source} ended before its checkpoint was committed;"
                                      " nothing was committed")
            with self._lock:
                check_pending(ckpt)
                for name, st, content in ingested:
                    self._add_ingested(ckpt, name, st, content)
                self._touch(ckpt)  # type: ignore[attr-defined]
            return self.seal(inode)  # type: ignore[attr-defined]
        except CedanaError as exc:  # why, for the dump that asked (it reads user.cedana.error)
            with self._lock:
                ckpt.error = ckpt.error or str(exc)
            raise

    @staticmethod
    def _reingest_gone(ckpt: CheckpointDir, source: str, ingested: list) -> list:
        """A GC that ran meanwhile may have deleted chunks the ingest found in the store: the files
        that reuse them are taken in again (they upload now), so the commit does not fail."""
        gone = ckpt.data.reused_gone()
        if not gone:
            return ingested
        log.warning("checkpoint %s/%s: %d reused chunks were deleted by a GC; storing them again",
                    ckpt.job, ckpt.id, len(gone))
        return [(name, st, ckpt.data.ingest(os.path.join(source, name))
                 if gone & {c.digest for c in content.chunks} else content)
                for name, st, content in ingested]

    def _add_ingested(self, ckpt: CheckpointDir, name: str, st: os.stat_result, content: FileContent) -> None:
        if name in ckpt.children:
            raise FsError(errno.EEXIST, f"{name} is already in {ckpt.job}/{ckpt.id}")
        inode = derive_inode(ckpt.inode, f"{name}\0{next(self._salt)}")
        self._add_child(ckpt, FileNode, name, stat.S_IFREG | (st.st_mode & 0o7777),  # type: ignore[attr-defined]
                        inode=inode, mtime_ns=st.st_mtime_ns, uid=st.st_uid, gid=st.st_gid,
                        pending=ckpt.data.finished_file(content))

    def materialize(self, inode: int, dest: str) -> None:
        """Write sealed checkpoint `inode`'s files into `dest`, a new local directory (mode 0700)."""
        with self._lock:
            ckpt = self._node(inode)  # type: ignore[attr-defined]
            if not isinstance(ckpt, CheckpointDir) or ckpt.state != SEALED:
                raise FsError(errno.EINVAL, "only a sealed checkpoint can be materialized")
        self._ensure_loaded(ckpt)  # type: ignore[attr-defined]
        manifest = ckpt.manifest
        try:
            os.mkdir(dest, 0o700)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO, f"cannot make {dest}: {exc.strerror}") from None
        for entry in sorted(manifest.files, key=lambda e: e.path):  # store I/O, outside the tree lock
            target = os.path.join(dest, entry.path)
            if entry.type == "dir":
                os.makedirs(target, mode=0o700, exist_ok=True)
            elif entry.type == "symlink":
                os.symlink(entry.target or "", target)
            elif entry.type == "file":
                self._materialize_file(ckpt, entry, target)

    def image_source(self, inode: int) -> Callable[[str], Callable[[int], None] | None]:
        """For sealed checkpoint `inode`: a name -> the writer of that top-level file's bytes into a
        file descriptor (None if it has no such file). A writer that cannot read a chunk records
        why in the checkpoint's error (user.cedana.error) and raises, leaving its output short."""
        with self._lock:
            ckpt = self._node(inode)  # type: ignore[attr-defined]
            if not isinstance(ckpt, CheckpointDir) or ckpt.state != SEALED:
                raise FsError(errno.EINVAL, "only a sealed checkpoint can be served")
        self._ensure_loaded(ckpt)  # type: ignore[attr-defined]
        files = {e.path: e for e in ckpt.manifest.files if e.type == "file" and "/" not in e.path}

        def source(name: str) -> Callable[[int], None] | None:
            entry = files.get(name)
            if entry is None:
                return None

            def write(fd: int) -> None:
                log.debug("serving %s of %s/%s (%d bytes)", name, ckpt.job, ckpt.id, entry.content.size)
                try:
                    self._data.write_to(entry.content, fd)
                    log.debug("served %s of %s/%s", name, ckpt.job, ckpt.id)
                except CedanaError as exc:
                    with self._lock:
                        ckpt.error = f"{entry.path}: {exc}"
                    raise
            return write
        return source

    def _materialize_file(self, ckpt: CheckpointDir, entry: Any, target: str) -> None:
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        try:
            self._data.materialize(entry.content, target, entry.mode & 0o7777)
        except CedanaError as exc:  # a missing or corrupt chunk: restores quote user.cedana.error
            with self._lock:
                ckpt.error = f"{entry.path}: {exc}"
            raise FsError(errno.EIO, ckpt.error) from None
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
