"""streamer (layer 1): bytes in and out of the checkpoint store.

Backends by URL (backends/), per-chunk codecs, chunking, the content-addressed chunk store with
leases and GC, the chunk cache, and streaming FileWriter/FileReader, tied together by Store.
Synchronous and thread-safe: trio callers use trio.to_thread.run_sync. Never imports catalog,
criu, fuse or app.
"""

from .backends import Backend, ObjectInfo, open_backend, open_store_backend
from .cache import CacheStats, ChunkCache
from .chunker import ChunkerSpec, FixedChunker, PageCdcChunker
from .chunkstore import ChunkStore, PutResult, chunk_key, digest_of
from .errors import (AuthError, BackendError, CorruptChunk, CorruptObject, MissingChunk, NoSuchBucket,
                     NoSuchObject, StoreFormatError, StoreKeyError, TemporaryFailure)
from .files import INLINE_THRESHOLD, ByteBudget, FileReader, FileWriter, read_to, write_stream
from .gc import GcResult, Lease, collect_garbage, open_lease
from .retry import RetryPolicy
from .store import Store, StoreStats

__all__ = [
    "AuthError", "Backend", "BackendError", "ByteBudget", "CacheStats", "ChunkCache", "ChunkStore",
    "ChunkerSpec", "CorruptChunk", "CorruptObject", "FileReader", "FileWriter", "FixedChunker", "GcResult",
    "INLINE_THRESHOLD", "Lease", "MissingChunk", "NoSuchBucket", "NoSuchObject", "ObjectInfo",
    "PageCdcChunker", "PutResult", "RetryPolicy", "Store", "StoreFormatError", "StoreKeyError", "StoreStats",
    "TemporaryFailure", "chunk_key", "collect_garbage", "digest_of", "open_backend", "open_lease",
    "open_store_backend", "read_to",
    "write_stream",
]
