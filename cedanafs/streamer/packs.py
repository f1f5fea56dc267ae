"""Pack objects: a bucket store's new chunks put several to an object, and where each one lies.

On S3 and GCS every object costs a request, and a request costs more CPU than the bytes it
carries: measured here, the client spent ~4 ms of CPU per 1 MiB chunk PUT beside compressing it,
and the server (moto) twice what it spends per byte on 8-16 MiB parts. So a bucket store puts the
chunks a writer stores into packs of `store.pack_size` bytes (the chunks of a checkpoint in ~120
objects per GiB instead of ~700), as restic and borg do; a local store keeps a file per chunk,
which costs no request and lets the mount compress its chunks after the commit.

A pack is `packs-<scheme>/<2 hex>/<pack id>`: the encoded chunks one after the other, each sealed
on its own in an encrypted store (so one is read with a range request and authenticated under
its chunk key), and beside it `<pack id>.idx`, the JSON list of (digest, offset, length) of its
chunks, put after the pack: an index only ever names a pack whose bytes are all there. GC deletes
the index first, then the pack, once none of its chunks is referenced or reused by a live writer.

A reader must know where every chunk lies before it reads one, and a GET per pack index made the
first read of a fresh mount over moto wait 0.85 s for a 1 GiB checkpoint's ~60 packs of 8 MiB. So a writer
that put several packs also puts, once they are all in, `<id>.sdx`: the indexes of all of them in
one object, which a reader reads instead of theirs. It is only a summary: a pack counts as in the
store while its own `.idx` is listed (a summary naming a pack GC deleted is not believed), and GC
deletes a summary once none of its packs is left.

A `PackWriter` belongs to one writer (one lease: the chunks of one checkpoint), so a pack that
cannot be put fails that writer and no other. It gathers what the writer's threads store into
the current pack and puts it when it is full, in the thread that filled it and outside the lock;
`flush()` puts the last, partial pack and waits for the others: ChunkStore calls it before the
writer's commit, so a manifest is written only once every chunk it names is in the store.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from .backends.base import Backend, Buffer
from .errors import CorruptObject

INDEX_SUFFIX = ".idx"
SUMMARY_SUFFIX = ".sdx"
INDEX_VERSION = 1


def pack_prefix(scheme: str) -> str:
    """Where a chunk id scheme's packs live: `packs-b3/`, `packs-kb3/`."""
    return f"packs-{scheme}/"


@dataclass(frozen=True)
class PackedChunk:
    """Where a chunk lies: the pack's key, the offset and length of its (sealed) bytes there."""

    pack: str
    offset: int
    length: int


def index_key(pack: str) -> str:
    return pack + INDEX_SUFFIX


def is_index(key: str) -> bool:
    return key.endswith(INDEX_SUFFIX)


def pack_of_index(key: str) -> str:
    return key[:-len(INDEX_SUFFIX)]


def is_summary(key: str) -> bool:
    return key.endswith(SUMMARY_SUFFIX)


def encode_summary(entries: Sequence[tuple[str, PackedChunk]]) -> bytes:
    return _encode([[digest, where.pack, where.offset, where.length] for digest, where in entries])


def decode_summary(key: str, blob: bytes) -> dict[str, list[tuple[str, PackedChunk]]]:
    """The chunks of each pack a summary lists; CorruptObject if it is not one."""
    def entry(digest, pack, offset, length) -> tuple[str, PackedChunk]:
        return str(digest), PackedChunk(str(pack), int(offset), int(length))
    packs: dict[str, list[tuple[str, PackedChunk]]] = {}
    for digest, where in _decode(f"pack summary {key}", blob, entry):
        packs.setdefault(where.pack, []).append((digest, where))
    return packs


def encode_index(entries: Sequence[tuple[str, PackedChunk]]) -> bytes:
    return _encode([[digest, where.offset, where.length] for digest, where in entries])


def decode_index(pack: str, blob: bytes) -> list[tuple[str, PackedChunk]]:
    """The chunks a pack index lists; CorruptObject if it is not one."""
    def entry(digest, offset, length) -> tuple[str, PackedChunk]:
        return str(digest), PackedChunk(pack, int(offset), int(length))
    return _decode(f"pack index {index_key(pack)}", blob, entry)


def _encode(rows: list[list]) -> bytes:
    return json.dumps({"version": INDEX_VERSION, "chunks": rows}).encode()


def _decode(what: str, blob: bytes, entry: Callable[..., tuple[str, PackedChunk]]) -> list[tuple[str, PackedChunk]]:
    """Each row of an index or a summary made into an entry; CorruptObject naming `what` if a
    row or the object is not what it should be."""
    try:
        body = json.loads(blob)
        if body.get("version") != INDEX_VERSION:
            raise ValueError(f"version {body.get('version')!r}")
        return [entry(*row) for row in body["chunks"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptObject(f"{what} is unreadable: {exc}") from None


class _Pack:
    def __init__(self, key: str):
        self.key = key
        self.segments: list[bytes] = []  # as stored: sealed one by one in an encrypted store
        self.entries: list[tuple[str, PackedChunk]] = []
        self.size = 0


class PackWriter:
    """Chunks into packs of about `target` bytes. Thread-safe; `put` is called with each pack
    (its key, entries) once it and its index are in the store. At most `max_puts` packs are
    being put at a time: a writer that fills packs faster waits, so what it holds stays the
    current pack and those being put."""

    def __init__(self, backend: Backend, prefix: str, target: int,
                 put: Callable[[str, list[tuple[str, PackedChunk]]], None], max_puts: int = 2):
        self.backend = backend
        self.prefix = prefix
        self.target = target
        self.max_puts = max_puts
        self._on_put = put
        self._lock = threading.Condition()
        self._current = self._new_pack()
        self._pending: dict[str, tuple[str, bytes]] = {}  # digest -> (chunk key, segment), until put
        self._in_flight = 0
        self._error: BaseException | None = None
        self._put_entries: list[tuple[str, PackedChunk]] = []  # of the packs put since the last summary

    def _new_pack(self) -> _Pack:
        return _Pack(self._new_key())

    def _new_key(self, suffix: str = "") -> str:
        name = secrets.token_hex(16)
        return f"{self.prefix}{name[:2]}/{name}{suffix}"

    def add(self, digest: str, chunk_key: str, parts: Sequence[Buffer]) -> None:
        """Queue a chunk's encoded bytes (`parts`, copied); puts the pack if it is now full. While
        the current pack is full and `max_puts` packs are being put, the writer's threads wait."""
        segment = bytes(self.backend.seal_segment(chunk_key, b"".join(parts)))
        with self._lock:
            while self._current.size >= self.target and self._in_flight >= self.max_puts and self._error is None:
                self._lock.wait()
            self._raise_error()
            pack = self._current
            pack.entries.append((digest, PackedChunk(pack.key, pack.size, len(segment))))
            pack.segments.append(segment)
            pack.size += len(segment)
            self._pending[digest] = (chunk_key, segment)
            if pack.size < self.target or self._in_flight >= self.max_puts:
                return  # full with no put free: the next add() or flush() puts it
            self._current = self._new_pack()
            self._in_flight += 1
        self._put(pack)

    def pending(self, digest: str) -> bytes | None:
        """The encoded bytes of a chunk added but not yet in the store (None: not pending)."""
        with self._lock:
            found = self._pending.get(digest)
        return None if found is None else self.backend.open_segment(found[0], found[1])

    def has(self, digest: str) -> bool:
        """Whether a chunk was added and is not yet in the store."""
        with self._lock:
            return digest in self._pending

    def flush(self) -> None:
        """Every chunk added so far is in the store when this returns (or its put's error raised)."""
        with self._lock:
            pack = self._current
            if pack.entries:
                self._current = self._new_pack()
                self._in_flight += 1
            else:
                pack = None
        if pack is not None:
            self._put(pack)
        with self._lock:
            while self._in_flight:
                self._lock.wait()
            self._raise_error()
            entries, self._put_entries = self._put_entries, []
        if len({where.pack for _, where in entries}) > 1:
            self.backend.put(self._new_key(SUMMARY_SUFFIX), encode_summary(entries))

    def _put(self, pack: _Pack) -> None:
        try:
            self.backend.put_segmented(pack.key, pack.segments)
            self.backend.put(index_key(pack.key), encode_index(pack.entries))
            self._on_put(pack.key, pack.entries)
            with self._lock:
                self._put_entries.extend(pack.entries)
        except BaseException as exc:
            with self._lock:
                self._error = self._error or exc
            raise
        finally:
            with self._lock:
                for digest, _ in pack.entries:
                    self._pending.pop(digest, None)
                self._in_flight -= 1
                self._lock.notify_all()

    def _raise_error(self) -> None:
        """A pack that could not be put fails its writer for good: its chunks are not in the store."""
        if self._error is not None:
            raise self._error
