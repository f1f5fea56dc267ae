"""What the tree's files are made of: streaming writers and cached readers of a streamer Store.

A pending checkpoint gets its own `session()`: its writers share one GC lease, taken at the first
write and released when the checkpoint is sealed or discarded, so GC running meanwhile never
deletes a chunk that the coming manifest will reference (the lease rule of cedanafs.streamer.gc).
"""

from __future__ import annotations

import logging
import threading

from ..streamer import FileReader, FileWriter, Lease, Progress, Store, ingest_dir, ingest_file, materialize
from ..types import FileContent

log = logging.getLogger(__name__)


class StoreData:
    """vfs Data over a Store: `writer()`, `reader(content)`, `session()`, `close()`."""

    def __init__(self, store: Store, leased: bool = False):
        self.store = store
        self.streams: int | None = None  # chunks of one file in flight (user.cedana.streams), None: the pool's
        self._leased = leased
        self._lease: Lease | None = None
        self._lock = threading.Lock()

    def session(self) -> "StoreData":
        """The Data of one pending checkpoint: writers under one lease."""
        return StoreData(self.store, leased=True)

    def writer(self) -> FileWriter:
        return self.store.writer(self._get_lease(), streams=self.streams)

    def reader(self, content: FileContent) -> FileReader:
        return self.store.reader(content)

    def ingest(self, path: str, progress: Progress | None = None) -> FileContent:
        """A whole local file into the store under this session's lease."""
        return ingest_file(self.store, path, self._get_lease(), progress)[0]

    def ingest_dir(self, source: str, progress: Progress | None = None, follow: bool = False) -> list:
        """A spool directory's files into the store: [(name, stat, content)] (see streamer.ingest)."""
        return ingest_dir(self.store, source, self._get_lease(), progress, follow)

    def materialize(self, content: FileContent, path: str, mode: int) -> int:
        return materialize(self.store, content, path, mode)

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
            lease.release()
