"""The local chunk cache: a memory LRU in front of an optional on-disk cache, with single-flight.

Holds verified plain chunk bytes keyed by digest. get_or_fetch() makes concurrent readers of one
chunk share one fetch. Both tiers are bounded in bytes; counters feed `store stats`. Disk entries
are re-verified when read back (a disk can rot, and we never return wrong bytes).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from .hashing import digest_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStats:
    memory_hits: int
    disk_hits: int
    misses: int
    fetches: int
    memory_bytes: int
    disk_bytes: int


class _Lru:
    """Byte-bounded LRU of digest -> bytes (memory tier)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.limit or key in self._items:
            return
        self._items[key] = data
        self.size += len(data)
        while self.size > self.limit:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def discard(self, key: str) -> None:
        data = self._items.pop(key, None)
        if data is not None:
            self.size -= len(data)


class DiskCache:
    """Chunk files under <dir>/<2 hex>/<digest>, evicted least-recently-used past `limit` bytes."""

    def __init__(self, root: str, limit: int):
        self.root = root
        self.limit = limit
        self.size = 0
        self._lock = threading.Lock()
        self._index: OrderedDict[str, int] = OrderedDict()
        # How an entry is checked against its name; a Store with keyed chunk ids sets its own.
        self.digest_of: Callable[[bytes], str] = digest_of
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)  # plain chunk bytes: process memory, for root only
        self._load()

    def _path(self, digest: str) -> str:
        return os.path.join(self.root, digest[:2], digest)

    def _load(self) -> None:
        entries = []
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                if len(name) != 64:
                    _unlink(path)  # a temp file left by a crash
                    continue
                st = os.stat(path)
                entries.append((st.st_atime, name, st.st_size))
        for _, name, size in sorted(entries):
            self._index[name] = size
            self.size += size
        self._evict()

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            if digest not in self._index:
                return None
            self._index.move_to_end(digest)
        try:
            with open(self._path(digest), "rb") as f:
                data = f.read()
        except OSError:
            self._drop(digest)
            return None
        if self.digest_of(data) != digest:
            log.warning("disk cache entry %s is corrupt; dropped", digest)
            self._drop(digest)
            return None
        return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self.limit:
            return
        with self._lock:
            if digest in self._index:
                return
        path = self._path(digest)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        except OSError as exc:
            log.warning("disk cache %s: cannot store a chunk: %s", self.root, exc)
            return
        with self._lock:
            self._index[digest] = len(data)
            self.size += len(data)
            self._evict()

    def _evict(self) -> None:
        while self.size > self.limit and self._index:
            digest, size = self._index.popitem(last=False)
            self.size -= size
            _unlink(self._path(digest))

    def _drop(self, digest: str) -> None:
        with self._lock:
            size = self._index.pop(digest, None)
            if size is not None:
                self.size -= size
        _unlink(self._path(digest))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class ChunkCache:
    """Memory LRU + optional DiskCache, with single-flight fetches and hit/miss counters."""

    def __init__(self, memory_limit: int = 64 << 20, disk_dir: str | None = None, disk_limit: int = 0):
        self._lock = threading.Lock()
        self._mem = _Lru(memory_limit)
        self.disk = DiskCache(disk_dir, disk_limit) if disk_dir and disk_limit > 0 else None
        self._inflight: dict[str, Future] = {}
        self.memory_hits = self.disk_hits = self.misses = self.fetches = 0

    def get_or_fetch(self, digest: str, fetch: Callable[[], bytes]) -> bytes:
        """The chunk from cache, or from fetch() – called once however many threads ask at once."""
        with self._lock:
            data = self._mem.get(digest)
            if data is not None:
                self.memory_hits += 1
                return data
            waiting = self._inflight.get(digest)
            if waiting is None:
                mine: Future = Future()
                self._inflight[digest] = mine
        if waiting is not None:
            return waiting.result()
        try:
            data = self._load(digest, fetch)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(data)
            return data
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    def _load(self, digest: str, fetch: Callable[[], bytes]) -> bytes:
        data = self.disk.get(digest) if self.disk else None
        if data is not None:
            with self._lock:
                self.disk_hits += 1
                self._mem.put(digest, data)
            return data
        with self._lock:
            self.misses += 1
            self.fetches += 1
        data = fetch()
        with self._lock:
            self._mem.put(digest, data)
        if self.disk:
            self.disk.put(digest, data)
        return data

    def contains(self, digest: str) -> bool:
        with self._lock:
            return self._mem.get(digest) is not None

    def discard(self, digest: str) -> None:
        with self._lock:
            self._mem.discard(digest)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.memory_hits, self.disk_hits, self.misses, self.fetches,
                              self._mem.size, self.disk.size if self.disk else 0)
