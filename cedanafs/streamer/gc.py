"""Writer leases and garbage collection of unreferenced chunks, safe while writers run.

The rule (docs/store.md has the reasoning):
- A writer opens a lease: an object leases/<id> whose backend mtime is the lease start. A
  background thread re-puts it every ttl/3; a lease not refreshed for ttl is dead (crashed writer).
- Chunks a writer uploads have an mtime >= its lease start. Chunks it reuses (dedup hits, found
  in the chunk store's local index without any request) are noted in the lease; before its
  manifest is committed the writer publishes that list in the lease object, then lists gc-runs/:
  if a GC marker or record appeared since its index was listed, it waits for the GC to end,
  re-lists the chunks and refuses to commit if a reused chunk is gone (ChunkStore.prepare_commit).
- GC puts a run marker in gc-runs/ first, takes its start time from the backend clock, lists
  leases, then the referenced digests (manifests listed after the leases), then the chunks, then
  reads the live leases' reused lists once more (after the manifests); if a lease seen at the
  start has been released by then, its writer committed (or gave up) meanwhile, so the manifests
  are listed again (a release follows the commit). It deletes a chunk only if
  it is unreferenced, in no live lease's list, and older than min(GC start, oldest live lease
  start) - grace, re-statting it just before the delete. Then it leaves a done record.
A pack (packs.py) is deleted whole, by the same rule, once none of its chunks may be: its mtime
is when its writer put it.
So a writer that published before the GC's marker is seen by the GC, and one that published
after it sees the marker. All times are backend mtimes: clocks of machines are never compared.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .chunkstore import GC_RUNS, ChunkStore
from .errors import BackendError, NoSuchObject

log = logging.getLogger(__name__)

LEASES = "leases/"
GC_MARKERS = "gc/"
DEFAULT_TTL = 600.0
DEFAULT_GRACE = 3600.0
GC_RECORDS_KEPT = 20  # done records left in gc-runs/ (writers compare listings, not times)


def backend_now(store: ChunkStore, tag: str = "clock") -> float:
    """The backend's current time: the mtime of a tiny object we put (then delete)."""
    key = f"{GC_MARKERS}{tag}-{uuid.uuid4().hex}"
    store.backend.put(key, b"")
    try:
        return store.backend.stat(key).mtime
    finally:
        store.backend.delete(key)


class Lease:
    """A writer's lease; use via ChunkStore-level open_lease() as a context manager."""

    def __init__(self, store: ChunkStore, ttl: float = DEFAULT_TTL):
        self.store = store
        self.ttl = ttl
        self.id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        self.key = LEASES + self.id
        self.start = 0.0
        self.reused: set[str] = set()
        self._reuse_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        body = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "ttl": self.ttl}
        if self.start:
            body["start"] = self.start  # the first put's mtime; refreshes move the mtime on
        with self._reuse_lock:
            if self.reused:
                body["reused"] = sorted(self.reused)
        return json.dumps(body).encode()

    def note_reused(self, digest: str) -> None:
        """A chunk the coming manifest references without uploading it (see the module docstring)."""
        with self._reuse_lock:
            self.reused.add(digest)

    def publish(self) -> None:
        """Put the lease with its reused list: GC runs from now on spare those chunks."""
        self.store.backend.put(self.key, self._body())

    def acquire(self) -> "Lease":
        self.store.backend.put(self.key, self._body())
        self.start = self.store.backend.stat(self.key).mtime
        self.store.backend.put(self.key, self._body())
        self._thread = threading.Thread(target=self._refresh_loop, name=f"lease-{self.id}", daemon=True)
        self._thread.start()
        log.debug("lease %s acquired at %.3f", self.id, self.start)
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.store.backend.put(self.key, self._body())
            except BackendError as exc:
                log.warning("lease %s: refresh failed: %s", self.id, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.backend.delete(self.key)
        except BackendError as exc:
            log.warning("lease %s: could not remove it (it expires by itself): %s", self.id, exc)

    def __enter__(self) -> "Lease":
        return self.acquire() if not self.start else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def open_lease(store: ChunkStore, ttl: float = DEFAULT_TTL) -> Lease:
    """A lease to hold while writing chunks that a manifest will reference: `with open_lease(s):`."""
    return Lease(store, ttl).acquire()


@dataclass
class GcResult:
    """What a GC pass found and did."""

    chunks_seen: int = 0
    referenced: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept_recent: int = 0
    cutoff: float = 0.0
    live_leases: list[str] = field(default_factory=list)
    expired_leases_removed: int = 0
    kept_reused: int = 0


def _lease_ttl(store: ChunkStore, key: str) -> float:
    try:
        return float(json.loads(store.backend.get(key)).get("ttl", DEFAULT_TTL))
    except (ValueError, AttributeError, BackendError):
        return DEFAULT_TTL


def _scan_leases(store: ChunkStore, now: float, result: GcResult) -> float:
    """Oldest live lease start (or now); expired leases are removed."""
    oldest = now
    for key in list(store.backend.list(LEASES)):
        try:
            info = store.backend.stat(key)
        except NoSuchObject:
            continue
        ttl = _lease_ttl(store, key)
        if now - info.mtime > ttl:
            store.backend.delete(key)
            result.expired_leases_removed += 1
            continue
        result.live_leases.append(key[len(LEASES):])
        oldest = min(oldest, _lease_start(store, key, info.mtime))
    return oldest


def _lease_start(store: ChunkStore, key: str, mtime: float) -> float:
    """A refresh moves the lease's mtime; its body keeps the first mtime, the writer's start."""
    try:
        body = json.loads(store.backend.get(key))
        return min(mtime, float(body.get("start", mtime)))
    except (ValueError, AttributeError, BackendError):
        return mtime


def collect_garbage(store: ChunkStore, referenced: Iterable[str] | Callable[[], Iterable[str]],
                    grace_seconds: float = DEFAULT_GRACE, dry_run: bool = False) -> GcResult:
    """Delete chunks no manifest references that no live writer may rely on.

    `referenced` is best a callable that lists the manifests *when called*: GC calls it after it
    has read the leases, which is the order the safety argument needs. A plain set must have been
    computed after this call's start minus the grace period.
    """
    result = GcResult()
    run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    marker = f"{GC_RUNS}run-{run_id}"
    if not dry_run:
        store.backend.put(marker, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
    try:
        now = backend_now(store, "gc")
        oldest = _scan_leases(store, now, result)
        refs = set(referenced() if callable(referenced) else referenced)
        result.referenced = len(refs)
        result.cutoff = min(now, oldest) - grace_seconds
        listed = list(store.list_digests())
        result.chunks_seen = len(listed)
        spared, present = _reused_by_leases(store)
        finished = any(LEASES + lease not in present for lease in result.live_leases)
        if finished and callable(referenced):
            # A writer released its lease since the scan: it committed its manifest first, maybe
            # after the listing above (or it gave up), so the manifests are listed again now.
            refs |= set(referenced())
            result.referenced = len(refs)
        # With a fixed set there is no listing to repeat: nothing is deleted this run.
        candidates = [] if finished and not callable(referenced) else [d for d in listed if d not in refs]
        for digest in candidates:
            if digest in spared:
                result.kept_reused += 1
                continue
            _maybe_delete(store, digest, result, dry_run)
        deletable = set(candidates) - spared
        for pack, digests in store.pack_members().items():
            if all(d in deletable for d in digests):  # a pack goes whole, once none of it is wanted
                _maybe_delete_pack(store, pack, len(digests), result, dry_run)
        if not dry_run:
            store.drop_stale_summaries()
    finally:
        if not dry_run:
            _finish_run(store, run_id, marker)
    log.info("gc: %d chunks seen, %d referenced, %d deleted (%d bytes), %d kept as recent",
             result.chunks_seen, result.referenced, result.deleted, result.deleted_bytes, result.kept_recent)
    return result


def _reused_by_leases(store: ChunkStore) -> tuple[set[str], set[str]]:
    """Every chunk a live writer has published as reused (read after the manifests were listed),
    and the lease keys read."""
    spared: set[str] = set()
    present: set[str] = set()
    for key in list(store.backend.list(LEASES)):
        try:
            spared.update(json.loads(store.backend.get(key)).get("reused", ()))
            present.add(key)
        except NoSuchObject:
            continue  # released meanwhile: the caller lists the manifests again
        except (ValueError, AttributeError):
            log.warning("gc: lease %s is unreadable; no chunk is deleted this run", key)
            raise BackendError(f"lease {key} is unreadable") from None
    return spared, present


def _finish_run(store: ChunkStore, run_id: str, marker: str) -> None:
    """A done record (so writers that listed the store before this run re-check), marker removed."""
    store.backend.put(f"{GC_RUNS}done-{run_id}", b"")
    store.backend.delete(marker)
    done = sorted(k for k in store.backend.list(GC_RUNS) if k.rsplit("/", 1)[-1].startswith("done-"))
    for key in done[:-GC_RECORDS_KEPT]:
        store.backend.delete(key)


def _maybe_delete_pack(store: ChunkStore, pack: str, chunks: int, result: GcResult, dry_run: bool) -> None:
    """As _maybe_delete, for a pack none of whose chunks is referenced or reused (its mtime is
    when its writer put it: the same rule as a chunk's)."""
    try:
        info = store.backend.stat(pack)
    except NoSuchObject:
        return
    if info.mtime >= result.cutoff:
        result.kept_recent += chunks
        return
    if not dry_run:
        store.delete_pack(pack)
    result.deleted += chunks
    result.deleted_bytes += info.size


def _maybe_delete(store: ChunkStore, digest: str, result: GcResult, dry_run: bool) -> None:
    try:
        info = store.stat(digest)  # re-stat just before deleting: a writer may have touched it
    except NoSuchObject:
        return  # gone, or only in a pack (deleted whole above)
    if info.mtime >= result.cutoff:
        result.kept_recent += 1
        return
    if not dry_run:
        store.delete(digest)
    result.deleted += 1
    result.deleted_bytes += info.stored_size
