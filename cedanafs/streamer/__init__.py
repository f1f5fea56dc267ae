"""streamer (layer 1): bytes in and out of the checkpoint store.

Backends by URL (backends/), per-chunk codecs, chunking, the content-addressed chunk store with
leases and GC, the chunk cache, and streaming FileWriter/FileReader, tied together by Store; the
bytes of files written into the mount's pending checkpoints (pending.py) and the store session
with its lease that the mount's tree writes through (session.py). Synchronous and thread-safe:
trio callers use trio.to_thread.run_sync. Never imports catalog, criu, fuse or app.
"""

from .backends import Backend, ObjectInfo, open_backend, open_store_backend
from .cache import CacheStats, ChunkCache
from .chunker import ChunkerSpec, FixedChunker, PageCdcChunker
from .chunkstore import ChunkStore, PutResult, chunk_key
from .hashing import digest_of
from .errors import (AuthError, BackendError, CorruptChunk, CorruptObject, MissingChunk, NoSuchBucket,
                     NoSuchObject, StoreFormatError, StoreKeyError, TemporaryFailure)
from .files import INLINE_THRESHOLD, ByteBudget, FileReader, FileWriter, read_to, write_stream
from .ingest import IngestAborted, Progress, ingest_dir, ingest_file, materialize
from .gc import GcResult, Lease, collect_garbage, open_lease
from .pending import PendingContent
from .retry import RetryPolicy
from .session import StoreSession
from .store import Store, StoreStats

__all__ = [
    "AuthError", "Backend", "BackendError", "ByteBudget", "CacheStats", "ChunkCache", "ChunkStore",
    "ChunkerSpec", "CorruptChunk", "CorruptObject", "FileReader", "FileWriter", "FixedChunker", "GcResult",
    "INLINE_THRESHOLD", "Lease", "MissingChunk", "NoSuchBucket", "NoSuchObject", "ObjectInfo",
    "PageCdcChunker", "PendingContent", "PutResult", "RetryPolicy", "Store", "StoreFormatError", "StoreKeyError",
    "StoreSession", "StoreStats", "TemporaryFailure", "chunk_key", "collect_garbage", "digest_of", "ingest_dir",
    "ingest_file", "materialize", "IngestAborted", "Progress", "open_backend", "open_lease", "open_store_backend",
    "read_to",
    "write_stream",
]
