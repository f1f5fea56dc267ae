"""The Store facade: one backend, its chunk store, the chunk cache, the byte budget and the pools.

The app layer builds one Store per store URL (Store.from_settings) and hands it to FileWriter /
FileReader; all of them share the upload budget (store.memory_limit) and the thread pools.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from cedanafs.config import Settings
from cedanafs.errors import ConfigError
from cedanafs.types import FileContent

from .backends import Backend, open_store_backend
from .backends.local import LocalBackend
from .cache import CacheStats, ChunkCache
from .chunker import ChunkerSpec
from .chunkstore import ChunkStore
from .files import INLINE_THRESHOLD, ByteBudget, FileReader, FileWriter
from .gc import DEFAULT_GRACE, DEFAULT_TTL, GcResult, Lease, collect_garbage, open_lease
from ..priority import set_background
from .retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_STREAMS = 8
DEFAULT_READAHEAD = 4
# Compression after the commit starts once no chunk was stored for this long (the ingest is over).
COMPACT_QUIET = 0.5
COMPACT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class StoreStats:
    """Chunk count and stored (encoded) bytes in the backend, plus this process's cache counters."""

    chunk_count: int
    stored_bytes: int
    cache: CacheStats


class Store:
    """Backend + ChunkStore + ChunkCache + upload budget + pools. Thread-safe."""

    def __init__(self, backend: Backend, *, codec: str = "zstd", chunker: ChunkerSpec | None = None,
                 memory_limit: int = 256 << 20, streams: int = 0, cache: ChunkCache | None = None,
                 inline_threshold: int = INLINE_THRESHOLD, readahead: int = DEFAULT_READAHEAD,
                 compress_after_commit: bool = False, pack_size: int = 0):
        self.backend = backend
        # An encrypted store's backend brings the key of its chunk ids (backends/crypt.py).
        self.chunks = ChunkStore(backend, codec, id_key=getattr(backend, "id_key", None),
                                 defer_compression=compress_after_commit,
                                 # Packs in memory count against the memory limit too (packs.py).
                                 pack_size=min(pack_size, max(1 << 20, memory_limit // 32)))
        self.chunker = chunker or ChunkerSpec()
        self.budget = ByteBudget(max(memory_limit, self.chunker.max_size))
        self.inline_threshold = inline_threshold
        self.readahead = readahead
        self.streams = streams if streams > 0 else DEFAULT_STREAMS
        self.cache = cache or ChunkCache(memory_limit=max(64 << 20, 2 * (readahead + 2) * self.chunker.max_size))
        if self.cache.disk is not None:
            self.cache.disk.digest_of = self.chunks.digest
        self.upload_pool = ThreadPoolExecutor(self.streams, thread_name_prefix="chunk-up")
        self.read_pool = ThreadPoolExecutor(self.streams, thread_name_prefix="chunk-down")
        self._closing = threading.Event()
        self._compactor: threading.Thread | None = None
        if self.chunks.defer_compression:
            self._compactor = threading.Thread(target=self._compact_loop, name="compact", daemon=True)
            self._compactor.start()

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None, *,
                      retry: RetryPolicy | None = None, chunker_kind: str = "cdc",
                      serving: bool = False) -> "Store":
        """The store of `url` (default store.url). `serving`: the owner lives on (a mount server),
        so it may compress chunks after their commit (store.compress_after_commit)."""
        mode = settings.store.compress_after_commit.lower()
        if mode not in COMPACT_MODES:
            raise ConfigError(f"config key 'store.compress_after_commit' must be one of {', '.join(COMPACT_MODES)},"
                              f" not {settings.store.compress_after_commit!r}")
        backend = open_store_backend(url or settings.store.url, settings, retry=retry)
        cache = ChunkCache(
            memory_limit=max(64 << 20, settings.store.memory_limit // 4),
            disk_dir=settings.cache.dir or None,
            disk_limit=settings.cache.size,
        )
        local = isinstance(getattr(backend, "inner", backend), LocalBackend)
        # "auto": on local disk compression competes with the ingest for the CPU and lz4 costs half
        # of zstd's time; over the network zstd's smaller chunks are worth it. CPU-bound work on a
        # local store wants a thread per core, network-bound uploads more requests in flight.
        codec = settings.store.codec if settings.store.codec != "auto" else ("lz4" if local else "zstd")
        streams = settings.checkpoint.streams or ((os.cpu_count() or 2) if local else DEFAULT_STREAMS)
        # After the commit: on a local disk compression is most of the ingest's CPU, and the time
        # until a checkpoint is safe is what a user waits for; a bucket wants fewer bytes uploaded.
        after_commit = serving and (mode == "on" or (mode == "auto" and local))
        return cls(backend, codec=codec,
                   chunker=ChunkerSpec.for_size(chunker_kind, settings.store.chunk_size),
                   memory_limit=settings.store.memory_limit, streams=streams,
                   cache=cache, readahead=max(DEFAULT_READAHEAD, settings.checkpoint.streams),
                   compress_after_commit=after_commit,
                   # A bucket store puts new chunks in packs (packs.py); a local one a file each.
                   pack_size=0 if local else settings.store.pack_size)

    @property
    def url(self) -> str:
        return self.backend.url

    def writer(self, lease: Lease | None = None, streams: int | None = None) -> FileWriter:
        return FileWriter(self, lease, streams=streams)

    def reader(self, content: FileContent) -> FileReader:
        return FileReader(self, content)

    def write_bytes(self, data: bytes, lease: Lease | None = None) -> FileContent:
        writer = self.writer(lease)
        writer.write(data)
        return writer.close()

    def read_bytes(self, content: FileContent) -> bytes:
        with self.reader(content) as reader:
            return reader.read(0, content.size)

    def open_lease(self, ttl: float = DEFAULT_TTL) -> Lease:
        self.chunks.revalidate()
        return open_lease(self.chunks, ttl)

    def collect_garbage(self, referenced: Iterable[str] | Callable[[], Iterable[str]],
                        grace_seconds: float = DEFAULT_GRACE, dry_run: bool = False) -> GcResult:
        return collect_garbage(self.chunks, referenced, grace_seconds, dry_run)

    def stats(self) -> StoreStats:
        """Lists every chunk (one stat each on remote stores: for `store stats`, not hot paths)."""
        count = stored = 0
        for digest in self.chunks.list_digests():
            count += 1
            stored += self.chunks.stored_size(digest)
        return StoreStats(count, stored, self.cache.stats())

    def compaction(self) -> dict[str, int | bool]:
        """Chunks stored plain, still to be compressed after their commit: {"chunks", "bytes"},
        and whether this store compresses after the commit at all ("after_commit")."""
        count, size = self.chunks.deferred()
        return {"chunks": count, "bytes": size, "after_commit": self.chunks.defer_compression}

    def _compact_loop(self) -> None:
        """Compress the chunks stored plain, once no ingest is storing any, at idle priority: the
        user's processes and the next dump's CRIU always go first. Left undone at close(), they
        stay plain (still valid chunks)."""
        set_background(True)
        while not self._closing.is_set():
            self.chunks.stored_plain.wait()
            quiet = COMPACT_QUIET - self.chunks.idle_for()
            if quiet > 0:
                self._closing.wait(quiet)
                continue
            try:
                done, saved = self.chunks.compact()
            except Exception as exc:  # a failing backend: try again later, the chunks stay valid
                log.warning("compressing stored chunks of %s failed (they stay plain): %s", self.url, exc)
                self._closing.wait(5.0)
                continue
            if done:
                log.debug("compressed %d chunks of %s after their commit, %d bytes saved", done, self.url, saved)

    def close(self) -> None:
        self._closing.set()
        try:
            self.chunks.flush_all()  # chunks stored without a commit are in the store all the same
        except Exception as exc:  # noqa: BLE001 - closing goes on; no commit named them
            log.warning("putting the last pack of %s failed: %s", self.url, exc)
        if self._compactor is not None:
            self.chunks.stored_plain.set()
            self._compactor.join()
        self.upload_pool.shutdown(wait=True, cancel_futures=True)
        self.read_pool.shutdown(wait=True, cancel_futures=True)
        self.backend.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.url} pid={os.getpid()}>"
