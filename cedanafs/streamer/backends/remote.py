"""S3 (s3fs) and GCS (gcsfs) backends over fsspec's synchronous API.

fsspec runs its asyncio loop on its own thread, so these methods may be called from any worker
thread. The filesystem object is created lazily, per process (after any fork), with
skip_instance_cache=True. The clients' own retry loops are turned down to a single attempt so
that retry.call_with_retry is the one policy (bounded attempts and total time).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from datetime import datetime
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import BackendError, CorruptObject, NoSuchBucket, NoSuchObject, translate
from ..retry import RetryPolicy, call_with_retry
from .base import AtomicWriter, Backend, ObjectInfo, check_key

log = logging.getLogger(__name__)

# S3 multipart parts must be >= 5 MiB; 8 MiB keeps memory per open stream small.
WRITE_BLOCK = 8 << 20


class RemoteBackend(Backend):
    """Objects under `bucket/prefix` of an fsspec filesystem built by `make_fs`."""

    def __init__(self, url: str, bucket: str, prefix: str, make_fs: Callable[[], Any],
                 endpoint: str, policy: RetryPolicy, bucket_probe: Callable[[Any, str], None]):
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.policy = policy
        self._make_fs = make_fs
        self._probe = bucket_probe
        self._fs: Any = None
        self._pid = 0
        self._lock = threading.Lock()
        self._bucket_ok = False

    # -- plumbing -------------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        """The fsspec filesystem for this process (recreated after fork: its loop thread is gone)."""
        with self._lock:
            if self._fs is None or self._pid != os.getpid():
                self._fs = self._make_fs()
                self._pid = os.getpid()
            return self._fs

    @property
    def _root(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def _where(self, key: str = "") -> str:
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def _call(self, key: str, fn: Callable[[Any], Any]) -> Any:
        """fn(fs) with errors translated and temporary failures retried."""
        return call_with_retry(lambda: self._once(key, fn), self.policy, self.url, self.endpoint)

    def _once(self, key: str, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self.fs)
        except Exception as exc:  # noqa: BLE001 - every client error goes through the one table
            err = translate(exc, self._where(key))
        if isinstance(err, NoSuchObject):
            self._check_bucket()
        raise err

    def _check_bucket(self) -> None:
        """A missing bucket often reads as a missing object: tell them apart once."""
        if self._bucket_ok:
            return
        try:
            self._probe(self.fs, self.bucket)
        except Exception as exc:  # noqa: BLE001
            err = translate(exc, self.url)
            if isinstance(err, NoSuchObject):
                raise NoSuchBucket(f"{self.url}: bucket {self.bucket!r} does not exist") from None
            raise err from None
        self._bucket_ok = True

    # -- the interface --------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        path = self._path(key)
        return self._call(key, lambda fs: fs.cat_file(path))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        size = self.stat(key).size
        if offset >= size:
            return b""
        end = min(offset + length, size)
        path = self._path(key)
        return self._call(key, lambda fs: fs.cat_file(path, start=offset, end=end))

    def get_segment(self, key: str, segment_key: str, offset: int, length: int) -> bytes:
        """A range request alone: where a segment lies is known, so no HEAD asks the size first."""
        path = self._path(key)
        data = self._call(key, lambda fs: fs.cat_file(path, start=offset, end=offset + length))
        if len(data) != length:
            raise CorruptObject(f"{self.url}: object {key} ends before its segment at {offset}+{length}")
        return data

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # A single PUT is atomic on S3 and GCS: readers see the old or the whole new object.
        self._call(key, lambda fs: fs.pipe_file(path, bytes(data)))

    def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # S3 If-None-Match: *, GCS ifGenerationMatch=0: the PUT fails if the object exists.
        self._call(key, lambda fs: fs.pipe_file(path, bytes(data), mode="create"))

    def list(self, prefix: str = "") -> Iterator[str]:
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = f"{self._root}/{head}" if head else self._root
        found = self._call(prefix, lambda fs: fs.find(base, withdirs=False))
        strip = len(self._root) + 1
        keys = [p[strip:] for p in found if p.startswith(self._root + "/")]
        if not keys:
            self._check_bucket()
        return iter([k for k in keys if k.startswith(prefix)])

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self._call(key, lambda fs: fs.rm_file(path))
        except NoSuchObject:
            pass

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        info = self._call(key, lambda fs: fs.info(path))
        if info.get("type") == "directory":
            raise NoSuchObject(f"{self._where(key)}: no such object")
        return ObjectInfo(size=int(info.get("size") or 0), mtime=_mtime(info))

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        f = self._call(key, lambda fs: fs.open(path, "rb", block_size=WRITE_BLOCK, cache_type="readahead"))
        return io.BufferedReader(_ReadStream(self, key, f), buffer_size=1 << 20)

    def open_write(self, key: str) -> AtomicWriter:
        path = self._path(key)
        f = self._call(key, lambda fs: fs.open(path, "wb", block_size=WRITE_BLOCK))
        return _RemoteWriter(self, key, f)

    def close(self) -> None:
        self._fs = None


def _mtime(info: dict) -> float:
    for name in ("LastModified", "mtime", "updated", "last_modified"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and value:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise BackendError(f"object info without a modification time: {sorted(info)}")


class _ReadStream(io.RawIOBase):
    """An fsspec read file whose errors come out as our typed errors."""

    def __init__(self, backend: RemoteBackend, key: str, f: Any):
        super().__init__()
        self._backend, self._key, self._f = backend, key, f

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self._f.read(len(buf))
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self._backend._where(self._key)) from None
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _RemoteWriter(AtomicWriter):
    """Multipart (S3) / resumable (GCS) upload that completes only on close()."""

    def __init__(self, backend: RemoteBackend, key: str, f: Any):
        super().__init__(key)
        self._backend, self._f = backend, f

    def _write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self._backend._where(self.key)) from None

    def _commit(self) -> None:
        try:
            self._f.close()
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, self._backend._where(self.key)) from None

    def _discard(self) -> None:
        try:
            self._f.discard()
        except Exception as exc:  # noqa: BLE001 - the upload is abandoned either way
            log.info("%s: could not cancel the upload: %s", self._backend._where(self.key), exc)
        # Mark the fsspec file closed so its __del__ never completes the abandoned upload.
        self._f.buffer = None
        self._f.closed = True
