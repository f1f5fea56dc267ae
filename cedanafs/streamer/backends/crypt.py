"""Client-side encryption of a store: a Backend that wraps another one (S3QL's comprenc pattern).

This module owns the store key (`StoreKey`: a random 256-bit master key, the subkeys derived from
it with HKDF-SHA256, and its public key id), the key file that holds it, and `EncryptedBackend`.

- Content: every object is sealed with AES-256-GCM under a fresh random 96-bit nonce; the
  associated data binds the object's plain key (name), so an object moved or renamed in the
  bucket fails authentication like a changed byte. A failure raises CorruptObject: nothing
  unauthenticated is ever returned.
- Names: the first component of a key is a namespace (`manifests`, `leases`, `chunks`) and stays
  plain (a key with one component is encrypted whole); the other components are encrypted
  deterministically with AES-SIV and written in base32,
  so job and checkpoint names never appear in the bucket, while list() gives the layers above
  the plain names back. Keys under `chunks-kb3/` (and gc-runs/) pass through: chunk ids are already keyed hashes
  (ChunkStore with `id_key`), which say nothing about the content to whoever lacks the key.
- Ranged reads fetch the whole object (chunks and manifests are small) and slice it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import os
import secrets
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CorruptObject
from .base import AtomicWriter, Backend, Buffer, BufferedWriter, ObjectInfo, check_key

log = logging.getLogger(__name__)

CIPHER = "aes-256-gcm"
NAMES = "aes-siv"
MAGIC = b"CFE1"  # cedanafs encrypted object, version 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = len(MAGIC) + NONCE_SIZE + TAG_SIZE
PLAIN_NAMESPACES = ("chunks-b3", "chunks-kb3", "packs-b3", "packs-kb3", "gc-runs")
KEY_FILE_VERSION = 1


class InvalidKeyFile(ValueError):
    """A key file that is not a cedanafs store key."""


def _derive(master: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class StoreKey:
    """The master key of one store and what is derived from it (never the master key itself)."""

    master: bytes

    @classmethod
    def generate(cls) -> "StoreKey":
        return cls(secrets.token_bytes(32))

    @property
    def id(self) -> str:
        """Public fingerprint: names the key in the store's format object and in messages."""
        return _derive(self.master, b"cedanafs key id", 8).hex()

    def content_key(self) -> bytes:
        return _derive(self.master, b"cedanafs object content", 32)

    def name_key(self) -> bytes:
        return _derive(self.master, b"cedanafs object names", 64)

    def chunk_id_key(self) -> bytes:
        """The key of the keyed chunk ids (ChunkStore id_key)."""
        return _derive(self.master, b"cedanafs chunk ids", 32)

    # -- the key file ----------------------------------------------------------------------
    def to_text(self) -> str:
        body = {"cedanafs_store_key": KEY_FILE_VERSION, "id": self.id,
                "key": base64.b64encode(self.master).decode()}
        return json.dumps(body) + "\n"

    @classmethod
    def from_text(cls, text: str) -> "StoreKey":
        try:
            body = json.loads(text)
            if body.get("cedanafs_store_key") != KEY_FILE_VERSION:
                raise InvalidKeyFile("not a cedanafs store key (version 1)")
            master = base64.b64decode(body["key"], validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise InvalidKeyFile(f"not a cedanafs store key: {exc}") from None
        if len(master) != 32:
            raise InvalidKeyFile("not a cedanafs store key: the key must be 32 bytes")
        key = cls(master)
        if body.get("id") not in (None, key.id):
            raise InvalidKeyFile("the key file's id does not match its key")
        return key


def read_key_file(path: str) -> StoreKey:
    """The key in `path`; FileNotFoundError if there is none, InvalidKeyFile if it is not one."""
    with open(path) as f:
        return StoreKey.from_text(f.read())


def write_key_file(path: str, key: StoreKey) -> None:
    """Create `path` (0600, its new parent dirs 0700); FileExistsError if it exists.

    Written whole under a temporary name, then linked: a reader never sees half a key."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    tmp = f"{path}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key.to_text())
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


class EncryptedBackend(Backend):
    """The Backend interface over `inner`, with every object encrypted and authenticated."""

    def __init__(self, inner: Backend, key: StoreKey):
        self.inner = inner
        self.key = key
        self.url = inner.url
        self.id_key: bytes | None = key.chunk_id_key()
        self._aead = AESGCM(key.content_key())
        self._siv = AESSIV(key.name_key())

    # -- names -----------------------------------------------------------------------------
    def _enc_name(self, key: str) -> str:
        """The stored key of an object; a root object's whole name is encrypted."""
        check_key(key)
        return self._enc_dir(key) if "/" in key else self._enc_part("", key)

    def _enc_dir(self, path: str) -> str:
        """A stored path below a plain namespace (also for the directory part of list prefixes)."""
        namespace, sep, rest = path.partition("/")
        if not sep or namespace in PLAIN_NAMESPACES:
            return path
        return namespace + "/" + "/".join(self._enc_part(namespace, p) for p in rest.split("/"))

    def _enc_part(self, namespace: str, part: str) -> str:
        sealed = self._siv.encrypt(part.encode(), [namespace.encode()])
        return base64.b32encode(sealed).decode().rstrip("=").lower()

    def _dec_name(self, stored: str) -> str | None:
        """The plain key of a stored one; None for objects not named with this key (the format object)."""
        namespace, sep, rest = stored.partition("/")
        if sep and namespace in PLAIN_NAMESPACES:
            return stored
        try:
            if not sep:
                return self._dec_part("", stored)
            return namespace + "/" + "/".join(self._dec_part(namespace, p) for p in rest.split("/"))
        except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError):
            return None

    def _dec_part(self, namespace: str, part: str) -> str:
        raw = base64.b32decode(part.upper() + "=" * (-len(part) % 8))
        return self._siv.decrypt(raw, [namespace.encode()]).decode()

    # -- content ---------------------------------------------------------------------------
    def seal(self, key: str, data: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_SIZE)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, MAGIC + key.encode())

    def open(self, key: str, blob: bytes) -> bytes:
        if len(blob) < OVERHEAD or not hmac.compare_digest(blob[:len(MAGIC)], MAGIC):
            raise CorruptObject(f"{self.url}: object {key} is not encrypted with this store's format")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_SIZE]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_SIZE:], MAGIC + key.encode())
        except InvalidTag:
            raise CorruptObject(f"{self.url}: object {key} failed authentication"
                                " (changed, truncated or moved in the store)") from None

    # -- the Backend interface -------------------------------------------------------------
    def get(self, key: str) -> bytes:
        return self.open(key, self.inner.get(self._enc_name(key)))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.get(key)[offset:offset + length]

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(self._enc_name(key), self.seal(key, bytes(data)))

    def put_unsynced(self, key: str, data: bytes) -> None:
        self.inner.put_unsynced(self._enc_name(key), self.seal(key, bytes(data)))

    def put_parts_unsynced(self, key: str, parts: Sequence[Buffer]) -> None:
        self.put_unsynced(key, b"".join(parts))

    def put_many(self, items: Sequence[tuple[str, Sequence[Buffer]]]) -> None:
        self.inner.put_many([(self._enc_name(key), (self.seal(key, b"".join(parts)),)) for key, parts in items])

    def sync(self) -> None:
        self.inner.sync()

    def seal_segment(self, segment_key: str, data: Buffer) -> bytes:
        return self.seal(segment_key, bytes(data))

    def open_segment(self, segment_key: str, stored: bytes) -> bytes:
        return self.open(segment_key, stored)

    def put_segmented(self, key: str, segments: Sequence[Buffer]) -> None:
        self.inner.put_segmented(self._enc_name(key), segments)  # each segment sealed on its own

    def get_segment(self, key: str, segment_key: str, offset: int, length: int) -> bytes:
        return self.open(segment_key, self.inner.get_segment(self._enc_name(key), segment_key, offset, length))

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(self._enc_name(key), self.seal(key, bytes(data)))

    def list(self, prefix: str = "") -> Iterator[str]:
        head, sep, _ = prefix.rpartition("/")
        inner_prefix = self._enc_dir(head) + "/" if sep else ""
        for stored in self.inner.list(inner_prefix):
            plain = self._dec_name(stored)
            if plain is None:
                log.debug("%s: object %s is not named with this store's key; not listed", self.url, stored)
                continue
            if plain.startswith(prefix):
                yield plain

    def delete(self, key: str) -> None:
        self.inner.delete(self._enc_name(key))

    def stat(self, key: str) -> ObjectInfo:
        info = self.inner.stat(self._enc_name(key))
        return ObjectInfo(max(0, info.size - OVERHEAD), info.mtime)

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._enc_name(key))

    def open_read(self, key: str) -> BinaryIO:
        return io.BytesIO(self.get(key))

    def open_write(self, key: str) -> AtomicWriter:
        return BufferedWriter(self, key)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"<EncryptedBackend {self.url} key {self.key.id}>"


__all__ = ["CIPHER", "EncryptedBackend", "InvalidKeyFile", "StoreKey", "read_key_file",
           "write_key_file"]
