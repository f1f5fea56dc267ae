"""The store session of the mount: streaming writers and cached readers of a Store, with a lease.

A pending checkpoint gets its own `session()`: its writers share one GC lease, taken at the first
write and released when the checkpoint is sealed or discarded, so GC running meanwhile never
deletes a chunk that the coming manifest will reference (the lease rule of cedanafs.streamer.gc).
`new_file()` gives the PendingContent of one file written into it (cedanafs.streamer.pending).
The mount's tree (cedanafs.catalog.tree) holds these through its `Data` protocol only.
"""

from __future__ import annotations

import logging
import threading

from cedanafs.types import FileContent

from .files import FileReader, FileWriter, write_to
from .gc import Lease
from .ingest import Progress, ingest_dir, ingest_file, materialize
from .pending import PendingContent
from .store import Store

log = logging.getLogger(__name__)


class StoreSession:
    """The tree's Data over a Store: `writer()`, `reader(content)`, `session()`, `new_file()`, `close()`."""

    def __init__(self, store: Store, leased: bool = False, spill_dir: str | None = None):
        self.store = store
        self.spill_dir = spill_dir  # where files written out of order are kept until finished
        self.streams: int | None = None  # chunks of one file in flight (user.cedana.streams), None: the pool's
        self._leased = leased
        self._lease: Lease | None = None
        self.progress: Progress | None = None  # an ingest's counters (user.cedana.progress)
        self._lock = threading.Lock()

    def session(self) -> "StoreSession":
        """The Data of one pending checkpoint: writers under one lease."""
        return StoreSession(self.store, leased=True, spill_dir=self.spill_dir)

    def new_file(self) -> PendingContent:
        """The bytes of one new file of this session's checkpoint."""
        return PendingContent(self, self.spill_dir)

    def writer(self) -> FileWriter:
        return self.store.writer(self._get_lease(), streams=self.streams)

    def reader(self, content: FileContent) -> FileReader:
        return self.store.reader(content)

    def finished_file(self, content: FileContent) -> PendingContent:
        """A file of this session's checkpoint whose bytes are already stored (an ingested one)."""
        return PendingContent.finished_with(self, content)

    def ingest(self, path: str) -> FileContent:
        """A whole local file into the store under this session's lease."""
        return ingest_file(self.store, path, self._get_lease(), self.progress)[0]

    def ingest_dir(self, source: str, follow: bool = False) -> list:
        """A spool directory's files into the store: [(name, stat, content)] (see streamer.ingest)."""
        self.progress = Progress()
        return ingest_dir(self.store, source, self._get_lease(), self.progress, follow)

    def materialize(self, content: FileContent, path: str, mode: int) -> int:
        return materialize(self.store, content, path, mode)

    def write_to(self, content: FileContent, fd: int) -> int:
        """A stored file's bytes into file descriptor `fd` (a pipe CRIU reads), verified."""
        return write_to(self.store, content, fd)

    def compaction(self) -> dict[str, int | bool]:
        """Chunks stored plain, to be compressed now that their checkpoint is committed."""
        return self.store.compaction()

    def reused_gone(self) -> set[str]:
        """Chunks this session reused that a concurrent GC deleted (see ChunkStore.reused_gone)."""
        with self._lock:
            lease = self._lease
        return set(self.store.chunks.reused_gone(lease))

    def prepare_commit(self) -> None:
        """Before the manifest: the chunks it references durable and safe from GC."""
        with self._lock:
            lease = self._lease
        self.store.chunks.prepare_commit(lease)

    def _get_lease(self) -> Lease | None:
        if not self._leased:
            return None
        with self._lock:
            if self._lease is None:
                self._lease = self.store.open_lease()  # store I/O; we are on a worker thread
            return self._lease

    def close(self) -> None:
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            self.store.chunks.drop_writer(lease)  # after a commit, nothing left; else nothing to keep
            lease.release()
