"""Content-addressed chunk store over a Backend: chunks/<2 hex>/<sha256 of the plain bytes>.

With an `id_key` (encrypted stores) the id is a keyed hash of the plain bytes instead.

Each chunk is compressed on its own (codecs.py), uploaded only if absent, and verified against
its digest on every read; a chunk found corrupt is remembered so readers fail fast instead of
refetching it in a loop (a later put() of the right bytes repairs it). Writers hold a lease
(gc.py) and refresh the mtime of old chunks they reuse, which is what keeps GC safe.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from cedanafs.types import ChunkRef

from . import codecs
from .backends.base import Backend
from .errors import CorruptChunk, CorruptObject, MissingChunk, NoSuchObject

if TYPE_CHECKING:
    from .gc import Lease

log = logging.getLogger(__name__)

PREFIX = "chunks/"
ID_SCHEME = "sha256"  # what the store format object records for plain ids
KEYED_ID_SCHEME = "hmac-sha256"  # ... and for ids keyed with the store key (encrypted stores)


def digest_of(data: bytes, key: bytes | None = None) -> str:
    """The chunk id of the plain bytes: hex SHA-256 (SHA-NI makes it faster here than blake2b),
    or with a store key HMAC-SHA256, so nobody without the key can confirm a guessed content."""
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
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

    def __init__(self, backend: Backend, codec: str = "zstd", id_key: bytes | None = None):
        codecs.codec_id(codec)  # fail early on a bad name
        self.backend = backend
        self.codec = codec
        self.id_key = id_key
        self._lock = threading.Lock()
        self._corrupt: set[str] = set()

    # -- writing --------------------------------------------------------------------------
    def put(self, data: bytes, lease: "Lease | None" = None) -> ChunkRef:
        return self.store(data, lease).ref

    def store(self, data: bytes, lease: "Lease | None" = None) -> PutResult:
        """Store `data` unless present; with a lease, re-put a present chunk older than the lease."""
        digest = self.digest_of(data)
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
        return PutResult(ref, len(blob), new=True)

    # -- reading --------------------------------------------------------------------------
    def get(self, ref: ChunkRef | str) -> bytes:
        """The plain bytes, verified; CorruptChunk or MissingChunk naming the digest."""
        digest = ref if isinstance(ref, str) else ref.digest
        if digest in self._corrupt_set():
            raise CorruptChunk(digest, "found corrupt earlier; not fetched again")
        try:
            blob = self.backend.get(chunk_key(digest))
        except NoSuchObject:
            raise MissingChunk(digest) from None
        except CorruptObject as exc:  # an encrypted store's object failed authentication
            raise self._corrupted(digest, str(exc)) from None
        return self._verify(digest, blob, ref)

    def digest_of(self, data: bytes) -> str:
        """This store's id of `data` (keyed when the store has an id key)."""
        return digest_of(data, self.id_key)

    def _verify(self, digest: str, blob: bytes, ref: ChunkRef | str) -> bytes:
        try:
            data = codecs.decode(blob)
        except codecs.DecodeError as exc:
            raise self._corrupted(digest, str(exc)) from None
        if self.digest_of(data) != digest:
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

    def forget_corrupt(self, digest: str | None = None) -> None:
        """Allow refetching a chunk (or all) after an operator repaired the store."""
        with self._lock:
            if digest is None:
                self._corrupt.clear()
            else:
                self._corrupt.discard(digest)

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
