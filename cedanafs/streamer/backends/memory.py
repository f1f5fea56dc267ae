"""In-memory backend for tests: memory://name is one process-global dict per name."""

from __future__ import annotations

import io
import threading
import time
from typing import BinaryIO, Iterator

from cedanafs.errors import NoSuchObject, ObjectExists
from .base import AtomicWriter, Backend, BufferedWriter, ObjectInfo, check_key

_STORES: dict[str, dict[str, tuple[bytes, float]]] = {}
_LOCK = threading.Lock()


def forget(name: str) -> None:
    """Drop the named in-memory store (tests call this to start clean)."""
    with _LOCK:
        _STORES.pop(name, None)


class MemoryBackend(Backend):
    """Objects in a dict shared by every MemoryBackend of the same name in this process."""

    def __init__(self, name: str):
        self.name = name
        self.url = f"memory://{name}"
        with _LOCK:
            self._objects = _STORES.setdefault(name, {})

    def _entry(self, key: str) -> tuple[bytes, float]:
        with _LOCK:
            entry = self._objects.get(check_key(key))
        if entry is None:
            raise NoSuchObject(f"{self.url}/{key}: no such object")
        return entry

    def get(self, key: str) -> bytes:
        return self._entry(key)[0]

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._entry(key)[0][offset:offset + length]

    def put(self, key: str, data: bytes) -> None:
        with _LOCK:
            self._objects[check_key(key)] = (bytes(data), time.time())

    def create(self, key: str, data: bytes) -> None:
        with _LOCK:
            if check_key(key) in self._objects:
                raise ObjectExists(f"{self.url}/{key}: already exists")
            self._objects[key] = (bytes(data), time.time())

    def list(self, prefix: str = "") -> Iterator[str]:
        with _LOCK:
            keys = [k for k in self._objects if k.startswith(prefix)]
        return iter(keys)

    def delete(self, key: str) -> None:
        with _LOCK:
            self._objects.pop(check_key(key), None)

    def stat(self, key: str) -> ObjectInfo:
        data, mtime = self._entry(key)
        return ObjectInfo(size=len(data), mtime=mtime)

    def open_read(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def open_write(self, key: str) -> AtomicWriter:
        return BufferedWriter(self, check_key(key))
