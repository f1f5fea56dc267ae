"""The manifest of one checkpoint: what it is, and the files it holds, as versioned JSON.

This module owns the manifest record (`Manifest`, `FileEntry`) and its JSON form. Decoding is
strict: a manifest that is not exactly what this version writes is refused with a CheckpointError
that names the checkpoint, so nothing downstream (restore, export, GC) works from a guess.
A manifest written by a newer format version is refused by name of that version, never misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from typing import Any, Iterable

from ..errors import CheckpointError, InvalidManifest, UsageError
from ..types import ChunkRef, FileContent
from .ids import check_checkpoint_name, check_job_name

FORMAT_VERSION = 1
FILE_TYPES = ("file", "symlink", "dir")
# Chunk digests end up in object keys, so they are held to a safe charset.
_DIGEST = re.compile(r"^[A-Za-z0-9:_-]{8,160}$")
_TOP_KEYS = {"format", "job", "id", "created", "parent", "kind", "host", "meta", "files"}
_FILE_KEYS = {"path", "type", "mode", "mtime_ns", "size", "chunks", "inline", "target"}


@dataclass(frozen=True)
class FileEntry:
    """One entry of a checkpoint: a regular file (with content), a symlink (with target) or a dir."""

    path: str
    type: str = "file"
    mode: int = 0o644
    mtime_ns: int = 0
    content: FileContent | None = None
    target: str | None = None

    @property
    def size(self) -> int:
        return self.content.size if self.content is not None else 0

    @property
    def chunks(self) -> tuple[ChunkRef, ...]:
        return self.content.chunks if self.content is not None else ()


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint: identity, provenance, and its files in path order."""

    job: str
    id: str
    created: datetime
    files: tuple[FileEntry, ...] = ()
    parent: str | None = None
    kind: str = "process"
    host: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    @property
    def name(self) -> str:
        """`job/id`, how messages and the CLI name a checkpoint."""
        return f"{self.job}/{self.id}"

    @property
    def size(self) -> int:
        """Logical bytes: the sum of the file sizes."""
        return sum(f.size for f in self.files)

    def digests(self) -> set[str]:
        """Every chunk digest the checkpoint references."""
        return {c.digest for f in self.files for c in f.chunks}

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise CheckpointError(f"checkpoint {self.name} has no file {path!r}")

    def encode(self) -> bytes:
        return encode_manifest(self)

    @cached_property
    def commit(self) -> str:
        """What names this one commit: a digest of the manifest's bytes. A name deleted and committed
        again is another commit; its manifest key carries this (cedanafs.catalog.catalog)."""
        return hashlib.sha256(encode_manifest(self)).hexdigest()[:16]


def make_manifest(job: str, checkpoint_id: str, files: Iterable[FileEntry], **kw: Any) -> Manifest:
    """Build and validate a Manifest; `created` defaults to now (UTC)."""
    kw.setdefault("created", datetime.now(timezone.utc))
    manifest = Manifest(job=job, id=checkpoint_id, files=tuple(sorted(files, key=lambda f: f.path)), **kw)
    validate_manifest(manifest)
    return manifest


# --- validation -------------------------------------------------------------------------------

def check_path(path: object) -> str:
    """A file path inside a checkpoint: relative, '/'-separated, no empty, '.' or '..' parts."""
    if not isinstance(path, str) or not path:
        raise ValueError("file path must be a non-empty string")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise ValueError(f"file path {path!r} must be relative with no empty, '.' or '..' parts")
    return path


def _check_content(entry: FileEntry) -> None:
    c = entry.content
    if entry.type != "file":
        if c is not None:
            raise ValueError(f"{entry.type} {entry.path!r} must not have content")
        if entry.type == "symlink" and not entry.target:
            raise ValueError(f"symlink {entry.path!r} has no target")
        return
    if c is None:
        raise ValueError(f"file {entry.path!r} has no content")
    if c.inline is not None and c.chunks:
        raise ValueError(f"file {entry.path!r} has both inline content and chunks")
    if c.inline is None and sum(ch.size for ch in c.chunks) != c.size:
        raise ValueError(f"file {entry.path!r}: chunk sizes do not add up to its size {c.size}")
    for ch in c.chunks:
        if not _DIGEST.match(ch.digest) or ch.size <= 0:
            raise ValueError(f"file {entry.path!r}: bad chunk {ch.digest!r} of size {ch.size}")


def _check_entry(entry: FileEntry) -> None:
    check_path(entry.path)
    if entry.type not in FILE_TYPES:
        raise ValueError(f"{entry.path!r}: unknown file type {entry.type!r}")
    if not 0 <= entry.mode <= 0o7777:
        raise ValueError(f"{entry.path!r}: mode {entry.mode!r} out of range")
    _check_content(entry)


def validate_manifest(m: Manifest, where: str = "") -> None:
    """Raise CheckpointError naming the checkpoint (`where`, else job/id) if it is not well formed."""
    try:
        check_job_name(m.job)
        check_checkpoint_name(m.id)
        if m.parent is not None:
            check_checkpoint_name(m.parent)
        if m.format != FORMAT_VERSION:
            raise ValueError(f"format version {m.format} is not {FORMAT_VERSION}")
        if not isinstance(m.kind, str) or not m.kind:
            raise ValueError("kind must be a non-empty string")
        if m.created.tzinfo is None:
            raise ValueError("created must carry a time zone")
        if not isinstance(m.meta, dict):
            raise ValueError("meta must be an object")
        seen: set[str] = set()
        for entry in m.files:
            _check_entry(entry)
            if entry.path in seen:
                raise ValueError(f"file {entry.path!r} listed twice")
            seen.add(entry.path)
    except (ValueError, UsageError) as exc:
        raise InvalidManifest(f"invalid manifest of checkpoint {where or m.job + '/' + m.id}: {exc}") from None


# --- JSON -------------------------------------------------------------------------------------

def _file_to_json(f: FileEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"path": f.path, "type": f.type, "mode": f.mode, "mtime_ns": f.mtime_ns}
    if f.type == "symlink":
        out["target"] = f.target
    if f.content is not None:
        out["size"] = f.content.size
        if f.content.inline is not None:
            out["inline"] = base64.b64encode(f.content.inline).decode("ascii")
        else:
            out["chunks"] = [[c.digest, c.size] for c in f.content.chunks]
    return out


def manifest_to_json(m: Manifest) -> dict[str, Any]:
    return {
        "format": m.format, "job": m.job, "id": m.id,
        "created": m.created.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "parent": m.parent, "kind": m.kind, "host": m.host, "meta": m.meta,
        "files": [_file_to_json(f) for f in m.files],
    }


def encode_manifest(m: Manifest) -> bytes:
    """Validate and serialise; the bytes are what `Catalog.commit` writes."""
    validate_manifest(m)
    return json.dumps(manifest_to_json(m), sort_keys=True, separators=(",", ":")).encode()


def _need(obj: dict, key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise ValueError(f"missing key {key!r}")
    value = obj[key]
    # bool is an int in Python; a JSON true where a number belongs is still wrong.
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _content_from_json(obj: dict) -> FileContent | None:
    if "size" not in obj:
        if "inline" in obj or "chunks" in obj:
            raise ValueError(f"{obj.get('path')!r}: content without size")
        return None
    size = _need(obj, "size", int)
    if "inline" in obj:
        try:
            data = base64.b64decode(_need(obj, "inline", str), validate=True)
        except binascii.Error:
            raise ValueError(f"{obj.get('path')!r}: inline content is not base64") from None
        return FileContent(size=size, inline=data)
    refs = []
    for item in _need(obj, "chunks", list):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool)):
            raise ValueError(f"{obj.get('path')!r}: a chunk must be [digest, size]")
        refs.append(ChunkRef(item[0], item[1]))
    return FileContent(size=size, chunks=tuple(refs))


def _file_from_json(obj: Any) -> FileEntry:
    if not isinstance(obj, dict):
        raise ValueError("a file entry must be an object")
    unknown = set(obj) - _FILE_KEYS
    if unknown:
        raise ValueError(f"file entry has unknown keys {sorted(unknown)}")
    target = obj.get("target")
    if target is not None and not isinstance(target, str):
        raise ValueError("symlink target must be a string")
    return FileEntry(
        path=_need(obj, "path", str), type=_need(obj, "type", str), mode=_need(obj, "mode", int),
        mtime_ns=_need(obj, "mtime_ns", int), content=_content_from_json(obj), target=target,
    )


def _parse_created(text: str) -> datetime:
    created = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if created.tzinfo is None:
        raise ValueError("created has no time zone")
    return created.astimezone(timezone.utc)


def _manifest_from_json(obj: dict) -> Manifest:
    unknown = set(obj) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    parent = obj.get("parent")
    if parent is not None and not isinstance(parent, str):
        raise ValueError("parent must be a string or null")
    return Manifest(
        job=_need(obj, "job", str), id=_need(obj, "id", str),
        created=_parse_created(_need(obj, "created", str)),
        files=tuple(_file_from_json(f) for f in _need(obj, "files", list)),
        parent=parent, kind=_need(obj, "kind", str), host=_need(obj, "host", str),
        meta=_need(obj, "meta", dict), format=_need(obj, "format", int),
    )


def decode_manifest(data: bytes, where: str = "") -> Manifest:
    """Parse and validate manifest bytes; `where` (e.g. `job/id`) names the checkpoint in errors."""
    label = where or "?"
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"manifest of checkpoint {label} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"manifest of checkpoint {label} is not a JSON object")
    version = obj.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"manifest of checkpoint {label} has format version {version!r}, but this cedana reads"
            f" only version {FORMAT_VERSION}; upgrade cedana to use it"
        )
    try:
        manifest = _manifest_from_json(obj)
    except ValueError as exc:
        raise InvalidManifest(f"invalid manifest of checkpoint {label}: {exc}") from None
    validate_manifest(manifest, label)
    return manifest
