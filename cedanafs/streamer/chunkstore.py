"""Content-addressed chunk store over a Backend: chunks-<scheme>/<2 hex>/<digest of the plain bytes>.

Each chunk is compressed on its own (codecs.py), uploaded only if the store does not have it,
and verified against its digest on every read; a chunk found corrupt or missing is remembered so
readers fail fast instead of refetching it in a loop (a later put() of the right bytes repairs
it): the one memory of broken chunks, which the mount relies on too.

With an `id_key` (encrypted stores) the id is BLAKE3 keyed with it (hashing.py).

Which chunks the store has is kept in a local index (`known`), filled by one listing of the
backend the first time a writer needs it and by our own puts: a dedup hit costs no request at
all. A writer records the chunks it reuses in its lease (gc.py), and before its manifest is
committed `prepare_commit` makes the new chunks durable, publishes that list, and checks that
no GC ran since the index was filled (else it re-lists and verifies), which keeps GC safe
without re-uploading or even touching reused chunks.

A bucket store puts new chunks into pack objects (packs.py; `pack_size`): a writer's chunks go
to its own PackWriter, flushed before its commit, and the index knows where each packed chunk
lies, so reads take it with one range request. Chunks stored as objects of their own (a local
store, or a bucket written by earlier versions) are read as before.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from cedanafs.types import ChunkRef

from . import codecs
from .backends.base import Backend
from .errors import CorruptChunk, CorruptObject, MissingChunk, NoSuchObject, StoreError
from .hashing import SCHEME_KEYED, SCHEME_PLAIN, chunk_prefix, digest_of, scheme_of
from .packs import (PackedChunk, PackWriter, decode_index, decode_summary, index_key, is_index, is_summary,
                    pack_of_index, pack_prefix)



class Lease(Protocol):
    """What storing needs of a writer's lease (gc.Lease): the chunks it reuses, and publishing them."""

    reused: set[str]

    def note_reused(self, digest: str) -> None: ...

    def publish(self) -> None: ...


log = logging.getLogger(__name__)

ID_SCHEME = SCHEME_PLAIN  # what the store format object records for plain ids
KEYED_ID_SCHEME = SCHEME_KEYED  # ... and for ids keyed with the store key (encrypted stores)
GC_RUNS = "gc-runs/"  # gc.py writes a marker here while it runs and a record when it is done
GC_WAIT = 600.0  # at most this long for a running GC before a commit that reuses chunks fails
RELIST_AFTER = 2.0  # a chunk found nowhere re-lists the store only if the last listing is older
INDEX_READERS = 8  # pack indexes read in parallel when the store is listed


def chunk_key(digest: str, scheme: str = SCHEME_PLAIN) -> str:
    """The backend key of a chunk: chunks-<scheme>/<2 hex>/<digest>."""
    return f"{chunk_prefix(scheme)}{digest[:2]}/{digest}"


@dataclass(frozen=True)
class PutResult:
    """What storing one chunk did: its ref, the bytes uploaded (0 on a dedup hit), whether new."""

    ref: ChunkRef
    stored_bytes: int
    new: bool
    touched: bool = False


@dataclass(frozen=True)
class ChunkInfo:
    """A stored chunk as listed: digest, stored (encoded) size, mtime."""

    digest: str
    stored_size: int
    mtime: float


class ChunkStore:
    """put/get/exists/delete of chunks by digest over one backend. Thread-safe."""

    def __init__(self, backend: Backend, codec: str = "zstd", id_key: bytes | None = None,
                 defer_compression: bool = False, pack_size: int = 0):
        codecs.codec_id(codec)  # fail early on a bad name
        self.backend = backend
        self.codec = codec
        # Chunks stored plain while a checkpoint is taken in, compressed by compact() after its
        # commit (see store()); only an owner that runs compact() later may turn this on.
        self.defer_compression = defer_compression and codec != "none"
        self._deferred: dict[str, int] = {}  # digest -> plain size, in the order stored
        self._last_store = 0.0
        self.stored_plain = threading.Event()  # set while _deferred holds chunks
        self.id_key = id_key
        self.scheme = scheme_of(id_key)
        self.prefix = chunk_prefix(self.scheme)
        self._lock = threading.Lock()
        self._corrupt: set[str] = set()
        self._missing: set[str] = set()
        self._known: set[str] | None = None
        self._gc_seen: frozenset[str] = frozenset()
        self._index_lock = threading.Lock()  # one listing at a time
        self._listed_at = 0.0
        # Packs (packs.py): off where chunks are compressed after the commit, which rewrites them.
        self.pack_size = 0 if self.defer_compression else max(0, pack_size)
        self.pack_prefix = pack_prefix(self.scheme)
        self._packers: dict[object, PackWriter] = {}  # lease (None: no lease) -> its pack writer
        self._packs: dict[str, list[tuple[str, PackedChunk]]] = {}  # pack key -> its chunks, as listed
        self._summaries: dict[str, dict[str, list[tuple[str, PackedChunk]]]] = {}  # summary key -> its packs
        self._located: dict[str, PackedChunk] = {}  # digest -> where it lies in a pack

    def digest(self, data: bytes) -> str:
        """This store's id of `data` (keyed when the store has an id key)."""
        return digest_of(data, self.id_key)

    def key(self, digest: str) -> str:
        return chunk_key(digest, self.scheme)

    # -- the index of chunks the store has ------------------------------------------------
    def _index(self) -> set[str]:
        known = self._known
        if known is None:
            with self._index_lock:
                if self._known is None:
                    self._sync_index()
                known = self._known
        return known  # type: ignore[return-value]

    def _sync_index(self) -> None:
        """List the GC records first, then the chunks: a GC after this shows as a new record."""
        started = time.monotonic()
        gc_seen = frozenset(self.backend.list(GC_RUNS))
        known = set(self.list_digests())
        with self._lock:
            self._known, self._gc_seen = known, gc_seen
            self._listed_at = time.monotonic()
        log.debug("chunk index of %s: %d chunks, %d packs (%.2f s)", self.backend.url, len(known),
                  len(self._packs), time.monotonic() - started)

    def revalidate(self) -> None:
        """At the start of a writer's session: re-list if a GC ran since the index was listed, so
        chunks it deleted are not taken as present (one LIST of gc-runs/ when nothing changed)."""
        if self._known is not None and frozenset(self.backend.list(GC_RUNS)) != self._gc_seen:
            with self._index_lock:
                self._sync_index()

    def _is_known(self, digest: str) -> bool:
        return digest in self._index()

    def _learn(self, digest: str) -> None:
        with self._lock:
            if self._known is not None:
                self._known.add(digest)

    def _forget(self, digest: str) -> None:
        with self._lock:
            if self._known is not None:
                self._known.discard(digest)

    # -- writing --------------------------------------------------------------------------
    def put(self, data: bytes, lease: "Lease | None" = None) -> ChunkRef:
        return self.store(data, lease).ref

    def store(self, data: bytes, lease: "Lease | None" = None, digest: str | None = None) -> PutResult:
        """Store `data` unless the store has it; a reused chunk is noted in the lease. `digest`:
        this store's id of `data`, when the caller took it already (see reuse())."""
        digest = digest or self.digest(data)
        ref = ChunkRef(digest, len(data))
        reused = self.reuse(ref, lease)
        if reused is not None:
            return reused
        deferred = self.defer_compression and codecs.worth_compressing(data, self.codec)
        header, body = codecs.plain_parts(data) if deferred else codecs.encode_parts(data, self.codec)
        packer = self._packer(lease)
        if packer is not None:  # in the store once its pack is put (_packed), by the commit at the latest
            packer.add(digest, self.key(digest), (header, body))
            return PutResult(ref, len(header) + len(body), new=True)
        self.backend.put_parts_unsynced(self.key(digest), (header, body))
        with self._lock:
            self._corrupt.discard(digest)
            self._missing.discard(digest)
            if deferred:
                self._deferred[digest] = len(data)
                self.stored_plain.set()
            self._last_store = time.monotonic()
        self._learn(digest)
        return PutResult(ref, len(header) + len(body), new=True)

    def reuse(self, ref: ChunkRef, lease: "Lease | None" = None) -> PutResult | None:
        """The chunk `ref` names, if the store has it (noted in the lease, so no GC deletes it
        before the commit); None if it must be stored."""
        if ref.digest in self._corrupt:
            return None
        packer = self._packer(lease, create=False)
        if not (packer is not None and packer.has(ref.digest) or self._is_known(ref.digest)):
            return None
        if lease is not None:
            lease.note_reused(ref.digest)
        return PutResult(ref, 0, new=False)

    # -- packs (packs.py) -------------------------------------------------------------------
    def _packer(self, lease: "Lease | None", create: bool = True) -> PackWriter | None:
        """The pack writer of `lease`'s writer (None where this store does not pack)."""
        if not self.pack_size:
            return None
        with self._lock:
            packer = self._packers.get(lease)
            if packer is None and create:
                packer = PackWriter(self.backend, self.pack_prefix, self.pack_size, self._packed)
                self._packers[lease] = packer
            return packer

    def _flush_packer(self, lease: "Lease | None") -> None:
        """The writer's chunks all in the store (its packs put), or the error of the one that failed."""
        with self._lock:
            packer = self._packers.pop(lease, None)
        if packer is not None:
            packer.flush()

    def drop_writer(self, lease: "Lease | None") -> None:
        """A writer that gives up: the chunks it has not put yet are dropped (nothing names them)."""
        with self._lock:
            self._packers.pop(lease, None)

    def flush_all(self) -> None:
        """Every writer's pending chunks put (at close: chunks stored without a commit survive)."""
        with self._lock:
            packers, self._packers = list(self._packers.values()), {}
        for packer in packers:
            packer.flush()

    def _packed(self, pack: str, entries: list[tuple[str, PackedChunk]]) -> None:
        """A pack and its index are in the store: its chunks are known and readable."""
        with self._lock:
            self._packs[pack] = entries
            for digest, where in entries:
                self._located.setdefault(digest, where)
                self._corrupt.discard(digest)
                self._missing.discard(digest)
                if self._known is not None:
                    self._known.add(digest)
            self._last_store = time.monotonic()

    def _pending(self, digest: str) -> bytes | None:
        with self._lock:
            packers = list(self._packers.values())
        for packer in packers:
            encoded = packer.pending(digest)
            if encoded is not None:
                return encoded
        return None

    def _locate(self, digest: str, relist: bool = False) -> PackedChunk | None:
        """Where a packed chunk lies; `relist`: list the store again first (at most every
        RELIST_AFTER seconds) if it is not known to be packed, as another writer may have packed it."""
        if self.pack_size and self._known is None:
            self._index()
        with self._lock:
            where = self._located.get(digest)
            stale = time.monotonic() - self._listed_at > RELIST_AFTER
        if where is None and relist and stale:
            with self._index_lock:
                self._sync_index()
            with self._lock:
                where = self._located.get(digest)
        return where

    def _read_pack_indexes(self) -> dict[str, list[tuple[str, PackedChunk]]]:
        """Every pack of the store with its chunks: a pack is there while its index is listed;
        what it holds comes from a writer's summary if one lists it, else from its own index
        (each read once: a pack never changes)."""
        keys = list(self.backend.list(self.pack_prefix))
        listed = [pack_of_index(k) for k in keys if is_index(k)]
        summaries = [k for k in keys if is_summary(k)]
        with self._lock:
            known, read = dict(self._packs), dict(self._summaries)
        for key, packs in self._read_all([k for k in summaries if k not in read], decode_summary):
            read[key] = packs or {}
        for packs in read.values():
            for pack, entries in packs.items():
                known.setdefault(pack, entries)
        indexes = [index_key(p) for p in listed if p not in known]
        for key, entries in self._read_all(indexes, lambda key, blob: decode_index(pack_of_index(key), blob)):
            if entries is not None:
                known[pack_of_index(key)] = entries
        packs = {pack: known[pack] for pack in listed if pack in known}
        located: dict[str, PackedChunk] = {}
        for entries in packs.values():
            for digest, where in entries:
                located.setdefault(digest, where)
        with self._lock:
            self._packs, self._located = packs, located
            self._summaries = {k: read[k] for k in summaries if k in read}
        return packs

    def _read_all(self, keys: list[str], decode: Callable[[str, bytes], object]) -> list:
        """(key, decode(key, its bytes)) of each object, read in parallel; None for one deleted
        since the listing (by a GC)."""
        if not keys:
            return []
        from concurrent.futures import ThreadPoolExecutor

        def read(key: str) -> tuple[str, object]:
            try:
                return key, decode(key, self.backend.get(key))
            except NoSuchObject:
                return key, None
        with ThreadPoolExecutor(min(INDEX_READERS, len(keys))) as pool:
            return list(pool.map(read, keys))

    def drop_stale_summaries(self) -> int:
        """Delete the summaries none of whose packs is left (after a GC); how many."""
        with self._lock:
            stale = [k for k, packs in self._summaries.items() if not set(packs) & set(self._packs)]
        for key in stale:
            self.backend.delete(key)
            with self._lock:
                self._summaries.pop(key, None)
        return len(stale)

    def location(self, digest: str) -> PackedChunk | None:
        """Where a chunk lies in a pack (None: stored as an object of its own, or not at all)."""
        return self._locate(digest, relist=True)

    def pack_members(self) -> dict[str, list[str]]:
        """The chunks of each pack, as the last listing found them (list_digests() lists again)."""
        with self._lock:
            return {pack: [d for d, _ in entries] for pack, entries in self._packs.items()}

    def delete_pack(self, pack: str) -> None:
        """Delete a pack: its index first, so that no reader looks for its chunks there any more."""
        self.backend.delete(index_key(pack))
        self.backend.delete(pack)
        with self._lock:
            for digest, _ in self._packs.pop(pack, ()):
                if self._located.get(digest, PackedChunk("", 0, 0)).pack == pack:
                    del self._located[digest]
                    if self._known is not None:
                        self._known.discard(digest)

    # -- compression after the commit ------------------------------------------------------
    def deferred(self) -> tuple[int, int]:
        """Chunks stored plain that compact() has yet to compress: (count, plain bytes)."""
        with self._lock:
            return len(self._deferred), sum(self._deferred.values())

    def idle_for(self) -> float:
        """Seconds since this store last stored a chunk."""
        with self._lock:
            return time.monotonic() - self._last_store

    def compact(self, batch: int = 32) -> tuple[int, int]:
        """Compress up to `batch` of the chunks stored plain by a deferring store() and replace
        them (one sync for the batch, then each renamed into place: a crash leaves the plain or
        the whole compressed chunk). (chunks compressed, bytes saved)."""
        with self._lock:
            digests = list(itertools.islice(self._deferred, batch))
        try:
            return self._compact(digests)
        finally:  # counted as deferred until replaced (or given up): deferred() says when all is done
            with self._lock:
                for digest in digests:
                    self._deferred.pop(digest, None)
                if not self._deferred:
                    self.stored_plain.clear()

    def _compact(self, digests: list[str]) -> tuple[int, int]:
        items, saved = [], 0
        for digest in digests:
            try:
                blob = self.backend.get(self.key(digest))
            except (NoSuchObject, CorruptObject):
                continue  # deleted by a GC meanwhile, or not ours to fix: a reader will say
            if not codecs.is_plain(blob):
                continue
            header, body = codecs.encode_parts(memoryview(blob)[1:], self.codec)
            if not codecs.is_plain(header):
                items.append((self.key(digest), (header, body)))
                saved += len(blob) - len(header) - len(body)
        if items:
            self.backend.put_many(items)
        return len(items), saved

    def prepare_commit(self, lease: "Lease | None") -> None:
        """Before a manifest that references this lease's chunks is committed: new chunks
        durable, reused ones published in the lease and still in the store."""
        missing = self.reused_gone(lease)
        if missing:
            raise StoreError(f"{len(missing)} chunk(s) this checkpoint reuses were deleted by a concurrent GC "
                             f"(first: {missing[0][:16]}); nothing was committed: dump again")

    def reused_gone(self, lease: "Lease | None") -> list[str]:
        """New chunks made durable, the lease's reused chunks published; those of them a GC
        deleted meanwhile (the index is re-listed then, so storing them again uploads them)."""
        self._flush_packer(lease)
        self.backend.sync()
        if lease is None or not lease.reused:
            return []
        lease.publish()
        if frozenset(self.backend.list(GC_RUNS)) == self._gc_seen:
            return []  # no GC ran since the index was listed: every reused chunk is still there
        self._wait_for_gc()
        with self._index_lock:
            self._sync_index()
        return [d for d in lease.reused if not self._is_known(d)]

    def _wait_for_gc(self) -> None:
        deadline = time.monotonic() + GC_WAIT
        while any(k.rsplit("/", 1)[-1].startswith("run-") for k in self.backend.list(GC_RUNS)):
            if time.monotonic() > deadline:
                raise StoreError("a GC of the store is still running; nothing was committed: dump again later")
            time.sleep(0.5)

    # -- reading --------------------------------------------------------------------------
    def get(self, ref: ChunkRef | str) -> bytes:
        """The plain bytes, verified; CorruptChunk or MissingChunk naming the digest."""
        digest = ref if isinstance(ref, str) else ref.digest
        return self._verify(digest, self._fetch(digest), ref)

    def get_into(self, ref: ChunkRef, blob_buf: bytearray, out: bytearray) -> memoryview:
        """As get(), with no new memory per chunk where the backend can read into a buffer: the
        stored object is read into `blob_buf`, and the plain bytes are a view of it (stored plain)
        or decoded into `out`. Both must outlive the view returned."""
        read_into = getattr(self.backend, "get_into", None)
        size = None
        if read_into is not None and ref.digest not in self._corrupt_set() and ref.digest not in self._missing:
            try:
                size = read_into(self.key(ref.digest), blob_buf)
            except NoSuchObject:
                size = None  # _fetch says so, and remembers it
        blob = memoryview(blob_buf)[:size] if size is not None else self._fetch(ref.digest)
        try:
            data = codecs.decode_into(blob, out)
        except codecs.DecodeError as exc:
            raise self._corrupted(ref.digest, str(exc)) from None
        return self._check(ref.digest, data, ref)

    def _fetch(self, digest: str) -> bytes:
        if digest in self._corrupt_set():
            raise CorruptChunk(digest, "found corrupt earlier; not fetched again")
        if digest in self._missing:
            raise MissingChunk(digest, "(found missing earlier; not fetched again)")
        where = self._locate(digest)
        try:
            if where is None:
                pending = self._pending(digest)
                if pending is not None:
                    return pending
                try:
                    return self.backend.get(self.key(digest))
                except NoSuchObject:
                    where = self._locate(digest, relist=True)
                    if where is None:
                        raise
            return self.backend.get_segment(where.pack, self.key(digest), where.offset, where.length)
        except NoSuchObject:
            with self._lock:
                self._missing.add(digest)
            raise MissingChunk(digest) from None
        except CorruptObject as exc:  # an encrypted store's object failed authentication
            raise self._corrupted(digest, str(exc)) from None

    def _verify(self, digest: str, blob: bytes, ref: ChunkRef | str) -> bytes:
        try:
            data = codecs.decode(blob)
        except codecs.DecodeError as exc:
            raise self._corrupted(digest, str(exc)) from None
        return self._check(digest, data, ref)

    def _check(self, digest: str, data, ref: ChunkRef | str):
        """`data` (bytes or a view) if it is the chunk `digest` names, else CorruptChunk."""
        if self.digest(data) != digest:
            raise self._corrupted(digest, "content does not match the digest")
        if isinstance(ref, ChunkRef) and len(data) != ref.size:
            raise self._corrupted(digest, f"{len(data)} bytes where {ref.size} were expected")
        return data

    def _corrupted(self, digest: str, detail: str) -> CorruptChunk:
        with self._lock:
            self._corrupt.add(digest)
        log.warning("chunk %s is corrupt in %s: %s", digest, self.backend.url, detail)
        return CorruptChunk(digest, detail)

    def _corrupt_set(self) -> set[str]:
        with self._lock:
            return set(self._corrupt) if self._corrupt else self._corrupt

    # -- listing and deleting -------------------------------------------------------------
    def exists(self, digest: str) -> bool:
        return self.backend.exists(self.key(digest)) or self._locate(digest, relist=True) is not None

    def delete(self, digest: str) -> None:
        self._forget(digest)
        self.backend.delete(self.key(digest))

    def list_digests(self) -> Iterator[str]:
        """Every chunk in the store, once: those stored as objects, then those in packs."""
        seen = set()
        for key in self.backend.list(self.prefix):
            name = key.rsplit("/", 1)[-1]
            if len(name) == 64:
                seen.add(name)
                yield name
        for entries in self._read_pack_indexes().values():
            for digest, _ in entries:
                if digest not in seen:
                    seen.add(digest)
                    yield digest

    def stat(self, digest: str) -> ChunkInfo:
        """The chunk stored as an object of its own (NoSuchObject for one only in a pack: GC
        deletes packs whole, see delete_pack)."""
        info = self.backend.stat(self.key(digest))
        return ChunkInfo(digest, info.size, info.mtime)

    def stored_size(self, digest: str) -> int:
        """Encoded bytes the chunk takes in the backend (for stats)."""
        try:
            return self.backend.stat(self.key(digest)).size
        except NoSuchObject:
            where = self._locate(digest)
            if where is None:
                raise
            return where.length
