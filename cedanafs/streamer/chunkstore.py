"""Content-addressed chunk store over a Backend: chunks/<2 hex>/<sha256 of the plain bytes>.

Each chunk is compressed on its own (codecs.py), uploaded only if absent, and verified against
its digest on every read; a chunk found corrupt or missing is remembered so readers fail fast
instead of refetching it in a loop (a later put() of the right bytes repairs it): the one memory
of broken chunks, which the mount relies on too. Writers hold a lease
(gc.py) and refresh the mtime of old chunks they reuse, which is what keeps GC safe.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Iterator, Protocol

from cedanafs.types import ChunkRef

from . import codecs
from .backends.base import Backend
from .errors import CorruptChunk, MissingChunk, NoSuchObject



class Lease(Protocol):
    """What storing needs of a writer's lease (gc.Lease): when it started, in backend time."""

    start: float


log = logging.getLogger(__name__)

PREFIX = "chunks/"


def digest_of(data: bytes) -> str:
    """Hex SHA-256 of the plain bytes (SHA-NI makes it faster here than blake2b)."""
    return hashlib.sha256(data).hexdigest()


def chunk_key(digest: str) -> str:
    return f"{PREFIX}{digest[:2]}/{digest}"


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

    def __init__(self, backend: Backend, codec: str = "zstd"):
        codecs.codec_id(codec)  # fail early on a bad name
        self.backend = backend
        self.codec = codec
        self._lock = threading.Lock()
        self._corrupt: set[str] = set()
        self._missing: set[str] = set()

    # -- writing --------------------------------------------------------------------------
    def put(self, data: bytes, lease: "Lease | None" = None) -> ChunkRef:
        return self.store(data, lease).ref

    def store(self, data: bytes, lease: "Lease | None" = None) -> PutResult:
        """Store `data` unless present; with a lease, re-put a present chunk older than the lease."""
        digest = digest_of(data)
        ref = ChunkRef(digest, len(data))
        key = chunk_key(digest)
        if digest not in self._corrupt_set():
            try:
                info = self.backend.stat(key)
            except NoSuchObject:
                info = None
            if info is not None:
                if lease is None or info.mtime >= lease.start:
                    return PutResult(ref, 0, new=False)
                # Touch on dedup hit: a re-put gives the chunk an mtime inside our lease, so a GC
                # running now keeps it (or, if it deleted it a moment ago, the chunk is back).
                blob = codecs.encode(data, self.codec)
                self.backend.put(key, blob)
                return PutResult(ref, 0, new=False, touched=True)
        blob = codecs.encode(data, self.codec)
        self.backend.put(key, blob)
        with self._lock:
            self._corrupt.discard(digest)
            self._missing.discard(digest)
        return PutResult(ref, len(blob), new=True)

    # -- reading --------------------------------------------------------------------------
    def get(self, ref: ChunkRef | str) -> bytes:
        """The plain bytes, verified; CorruptChunk or MissingChunk naming the digest."""
        digest = ref if isinstance(ref, str) else ref.digest
        if digest in self._corrupt_set():
            raise CorruptChunk(digest, "found corrupt earlier; not fetched again")
        if digest in self._missing:
            raise MissingChunk(digest, "(found missing earlier; not fetched again)")
        try:
            blob = self.backend.get(chunk_key(digest))
        except NoSuchObject:
            with self._lock:
                self._missing.add(digest)
            raise MissingChunk(digest) from None
        return self._verify(digest, blob, ref)

    def _verify(self, digest: str, blob: bytes, ref: ChunkRef | str) -> bytes:
        try:
            data = codecs.decode(blob)
        except codecs.DecodeError as exc:
            raise self._corrupted(digest, str(exc)) from None
        if digest_of(data) != digest:
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
        return self.backend.exists(chunk_key(digest))

    def delete(self, digest: str) -> None:
        self.backend.delete(chunk_key(digest))

    def list_digests(self) -> Iterator[str]:
        for key in self.backend.list(PREFIX):
            name = key.rsplit("/", 1)[-1]
            if len(name) == 64:
                yield name

    def stat(self, digest: str) -> ChunkInfo:
        info = self.backend.stat(chunk_key(digest))
        return ChunkInfo(digest, info.size, info.mtime)

    def stored_size(self, digest: str) -> int:
        """Encoded bytes the chunk takes in the backend (for stats)."""
        return self.backend.stat(chunk_key(digest)).size
