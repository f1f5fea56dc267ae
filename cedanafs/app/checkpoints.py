"""Checkpoint store use cases: import, export, list, inspect, verify, delete, gc and stats.

This module owns the wiring of the streamer (bytes: Store, FileWriter, read_to, leases, GC) and
the catalog (manifests and their index) for the `cedana checkpoint|gc|store` commands. An
import streams each file of an images directory into the chunk store under a writer lease and
commits the manifest last; an export writes into a staging directory beside the destination and
renames it into place only once every byte has been read and verified, so a corrupt chunk never
leaves wrong bytes behind.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..catalog import Catalog, CheckpointInfo, FileEntry, Manifest
from ..catalog.ids import check_checkpoint_name, check_job_name
from ..config import Settings, host_name
from ..errors import AlreadyExists, CheckpointError, NotFound, StoreError, UsageError
from ..streamer import Backend, CorruptChunk, MissingChunk, NoSuchObject, Store, open_backend, read_to
from ..streamer.gc import DEFAULT_GRACE
from ..types import ChunkRef, FileContent, TransferStats
from .archive import SUMS_NAMES, format_from_name, open_tar_stream, sniff_format

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
COPY_BLOCK = 1 << 20


# --- records ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileReport:
    """One entry of an inspected checkpoint, archive or directory."""

    path: str
    type: str
    mode: int
    size: int
    mtime_ns: int
    chunks: int = 0
    inline: bool = False
    target: str | None = None


@dataclass(frozen=True)
class Inspection:
    """What `checkpoint inspect` shows. For archives and directories the store fields are None."""

    source: str
    kind: str  # "checkpoint", "archive" or "directory"
    files: tuple[FileReport, ...]
    logical_bytes: int
    format: str | None = None
    job: str | None = None
    id: str | None = None
    created: datetime | None = None
    parent: str | None = None
    host: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    chunk_refs: int | None = None
    unique_chunks: int | None = None
    stored_bytes: int | None = None
    exclusive_stored_bytes: int | None = None
    missing_chunks: int | None = None
    archive_bytes: int | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of reading every chunk of a checkpoint; `problems` are one sentence each."""

    checkpoint: str
    files: int
    chunks: int
    bytes_checked: int
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"checkpoint {self.checkpoint}: {self.chunks} chunks of {self.files} files verified"
        more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        return self.problems[0] + more


@dataclass(frozen=True)
class GcReport:
    """What one GC pass did."""

    chunks_seen: int
    referenced: int
    deleted: int
    deleted_bytes: int
    kept_recent: int
    live_leases: tuple[str, ...]
    grace_seconds: float
    dry_run: bool


@dataclass(frozen=True)
class StoreReport:
    """`store stats`: what the checkpoints hold against what the store keeps.

    dedup_ratio = logical bytes / unique plain bytes (distinct chunks + inline bytes);
    compression_ratio = plain bytes of the distinct referenced chunks / their stored bytes.
    """

    url: str
    jobs: int
    checkpoints: int
    logical_bytes: int
    unique_bytes: int
    stored_bytes: int
    chunk_count: int
    referenced_chunks: int
    unreferenced_chunks: int
    unreferenced_bytes: int
    dedup_ratio: float
    compression_ratio: float


@dataclass(frozen=True)
class _Entry:
    """A directory entry found by an import scan."""

    rel: str
    kind: str
    st: os.stat_result


# --- the service ----------------------------------------------------------------------------

class Checkpoints:
    """The checkpoint store of one URL: a streamer Store and a Catalog over its backend."""

    def __init__(self, store: Store, catalog: Catalog, settings: Settings | None = None):
        self.store = store
        self.catalog = catalog
        self.settings = settings or Settings()

    @classmethod
    def open(cls, settings: Settings, store_url: str | None = None, db_path: str | None = None) -> "Checkpoints":
        store = Store.from_settings(settings, store_url)
        try:
            catalog = Catalog(store.backend, db_path or settings.db.path, pool=store.read_pool)
        except BaseException:
            store.close()
            raise
        return cls(store, catalog, settings)

    def close(self) -> None:
        self.catalog.close()
        self.store.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- import ---------------------------------------------------------------------------

    def import_dir(self, path: str | os.PathLike, job: str, name: str | None = None, *, kind: str = "import",
                   meta: dict[str, Any] | None = None, progress: Progress | None = None,
                   images: str = "") -> Manifest:
        """Store an images directory as a new checkpoint of `job` (named `name`, else a fresh id).

        `images` names the subdirectory holding CRIU's images when they are not at the top (a
        container checkpoint keeps them in `checkpoint/`, beside the engine's own files)."""
        root = Path(path)
        check_job_name(job)
        if name is not None:
            check_checkpoint_name(name)
            if self.catalog.exists(job, name):
                raise AlreadyExists(f"checkpoint {job}/{name} already exists")
        entries = _scan(root, images)
        with self.store.open_lease() as lease:
            files, stats = self._store_entries(root, entries, lease, progress)
            # Like `cp -a`/`rsync -a` into the mount: the checkpoint keeps its directory's owner.
            owner = root.stat()
            meta = {"uid": str(owner.st_uid), "gid": str(owner.st_gid), **(meta or {}),
                    "transfer": _transfer_meta(stats)}
            files = self._store_gone_again(root, entries, files, lease)
            self.store.chunks.prepare_commit(lease)  # chunks durable, reused ones safe from GC
            manifest = self.catalog.commit_files(job, files, name=name, kind=kind, meta=meta,
                                                 host=host_name(self.settings))
        log.info("imported %s as %s: %d bytes, %d stored (%d new chunks, %d reused)", root, manifest.name,
                 stats.logical_bytes, stats.stored_bytes, stats.new_chunks, stats.reused_chunks)
        return manifest

    def _store_gone_again(self, root: Path, entries: list[_Entry], files: list[FileEntry],
                          lease: Any) -> list[FileEntry]:
        """A GC that ran meanwhile may have deleted chunks found in the store: the files that reuse
        them are stored again (they upload now), so the commit does not fail for it."""
        gone = set(self.store.chunks.reused_gone(lease))
        if not gone:
            return files
        log.info("%d reused chunks were deleted by a GC meanwhile; storing their files again", len(gone))
        by_path = {e.rel: e for e in entries}
        again = []
        for f in files:
            if f.content is not None and gone & {c.digest for c in f.content.chunks}:
                content, _ = self._store_file(root / f.path, by_path[f.path], lease, None)
                f = dataclasses.replace(f, content=content)
            again.append(f)
        return again

    def total_bytes(self, path: str | os.PathLike) -> int:
        """Bytes an import of `path` will read (for a progress bar)."""
        return sum(e.st.st_size for e in _scan(Path(path)) if e.kind == "file")

    def _store_entries(self, root: Path, entries: list[_Entry], lease: Any,
                       progress: Progress | None) -> tuple[list[FileEntry], TransferStats]:
        files, total = [], TransferStats()
        for entry in entries:
            content, stats = None, None
            if entry.kind == "file":
                content, stats = self._store_file(root / entry.rel, entry, lease, progress)
                total = _add_stats(total, stats)
            target = os.readlink(root / entry.rel) if entry.kind == "symlink" else None
            files.append(FileEntry(path=entry.rel, type=entry.kind, mode=stat.S_IMODE(entry.st.st_mode),
                                   mtime_ns=entry.st.st_mtime_ns, content=content, target=target))
        return files, total

    def _store_file(self, path: Path, entry: _Entry, lease: Any,
                    progress: Progress | None) -> tuple[FileContent, TransferStats]:
        writer = self.store.writer(lease)
        try:
            with open(path, "rb") as src:
                for block in iter(lambda: src.read(COPY_BLOCK), b""):
                    writer.write(block)
                    if progress:
                        progress(len(block))
            content = writer.close()
        except BaseException:
            writer.abort()
            raise
        if content.size != entry.st.st_size or os.stat(path).st_mtime_ns != entry.st.st_mtime_ns:
            raise CheckpointError(f"{path} changed while it was being imported; import it again once it is complete")
        return content, writer.stats

    # --- export ---------------------------------------------------------------------------

    def export(self, ref: str, dest: str | os.PathLike, progress: Progress | None = None) -> Manifest:
        """Write checkpoint `ref` as a plain images directory at `dest` (which must not hold files)."""
        manifest = self.catalog.find(ref)
        dest = Path(dest).absolute()
        _check_dest(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.export-", dir=dest.parent))
        try:
            self._materialize(manifest, staging, progress)
            if dest.exists():
                dest.rmdir()  # checked empty above; rename needs it gone
            staging.rename(dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("exported %s to %s (%d bytes)", manifest.name, dest, manifest.size)
        return manifest

    def _materialize(self, m: Manifest, root: Path, progress: Progress | None) -> None:
        for f in m.files:
            if f.type == "dir":
                (root / f.path).mkdir(parents=True, exist_ok=True)
        for f in m.files:
            target = root / f.path
            if f.type == "file":
                target.parent.mkdir(parents=True, exist_ok=True)
                self._write_file(m, f, target, progress)
            elif f.type == "symlink":
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f.target, target)
                os.utime(target, ns=(f.mtime_ns, f.mtime_ns), follow_symlinks=False)
        # Directories last and deepest first: creating their entries changed their mtimes.
        for f in sorted((f for f in m.files if f.type == "dir"), key=lambda f: -f.path.count("/")):
            os.chmod(root / f.path, f.mode)
            os.utime(root / f.path, ns=(f.mtime_ns, f.mtime_ns))
        os.chmod(root, 0o700)  # process memory: the exported dir is its owner's alone (docs/security.md)
        _give_to_owner(root, m)

    def _write_file(self, m: Manifest, f: FileEntry, target: Path, progress: Progress | None) -> None:
        assert f.content is not None
        with open(target, "wb") as out:
            try:
                read_to(self.store, f.content, _Counting(out, progress))
            except (CorruptChunk, MissingChunk) as exc:
                raise _chunk_error(m, f.path, exc) from None
        os.chmod(target, f.mode)
        os.utime(target, ns=(f.mtime_ns, f.mtime_ns))

    # --- list / inspect -------------------------------------------------------------------

    def list(self, job: str | None = None) -> list[CheckpointInfo]:
        return self.catalog.checkpoints(job)

    def inspect(self, ref: str) -> Inspection:
        """A checkpoint in the store, or an archive / images directory given by path or URL."""
        if "://" in ref or os.path.exists(ref):
            return self._inspect_path(ref)
        return self._inspect_checkpoint(self.catalog.find(ref))

    def _inspect_path(self, ref: str) -> Inspection:
        if os.path.isdir(ref):
            files = _dir_reports(Path(ref))
            return Inspection(source=ref, kind="directory", files=files, logical_bytes=sum(f.size for f in files))
        source = _ArchiveSource(ref, self.settings)
        try:
            fmt = sniff_format(source.head()) or format_from_name(ref)
            with source.open() as stream, open_tar_stream(stream, ref) as tar:
                files = tuple(_member_report(member) for member in tar if member.name not in SUMS_NAMES)
            size = source.size()
        finally:
            source.close()
        return Inspection(source=ref, kind="archive", files=files, format=fmt,
                          logical_bytes=sum(f.size for f in files), archive_bytes=size)

    def _inspect_checkpoint(self, m: Manifest) -> Inspection:
        digests = m.digests()
        stored = self._stored_sizes(digests)
        sharing = self.catalog.sharing(m.job, m.id)
        present = {d: s for d, s in stored.items() if s is not None}
        files = tuple(FileReport(path=f.path, type=f.type, mode=f.mode, size=f.size, mtime_ns=f.mtime_ns,
                                 chunks=len(f.chunks), inline=f.content is not None and f.content.inline is not None,
                                 target=f.target) for f in m.files)
        return Inspection(
            source=m.name, kind="checkpoint", files=files, logical_bytes=m.size, job=m.job, id=m.id,
            created=m.created, parent=m.parent, host=m.host, meta=m.meta,
            chunk_refs=sum(len(f.chunks) for f in m.files), unique_chunks=len(digests),
            stored_bytes=sum(present.values()),
            exclusive_stored_bytes=sum(s for d, s in present.items() if sharing.get(d, 1) <= 1),
            missing_chunks=len(digests) - len(present),
        )

    def _stored_sizes(self, digests: set[str]) -> dict[str, int | None]:
        """Encoded size of each chunk in the backend (None if missing); stats run in parallel."""
        def size(digest: str) -> int | None:
            try:
                return self.store.chunks.stored_size(digest)
            except NoSuchObject:
                return None
        ordered = sorted(digests)
        return dict(zip(ordered, self.store.read_pool.map(size, ordered)))

    # --- verify ---------------------------------------------------------------------------

    def verify(self, ref: str, raise_on_error: bool = True) -> VerifyReport:
        """Read every chunk of the checkpoint and check every hash (the cache is bypassed)."""
        m = self.catalog.find(ref)
        users: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for f in m.files:
            for c in f.chunks:
                users.setdefault(c.digest, []).append(f.path)
                sizes[c.digest] = c.size
        refs = [ChunkRef(d, sizes[d]) for d in sorted(users)]
        errors = list(self.store.read_pool.map(self._check_chunk, refs))
        problems = tuple(_chunk_error(m, ", ".join(dict.fromkeys(users[r.digest])), e).args[0]
                         for r, e in zip(refs, errors) if e is not None)
        report = VerifyReport(checkpoint=m.name, files=sum(1 for f in m.files if f.type == "file"),
                              chunks=len(refs), bytes_checked=sum(sizes.values()), problems=problems)
        if problems:
            # Reported to the caller (and by the CLI as its one error line); not logged as an error too.
            log.info("verify %s: %d bad chunks", m.name, len(problems))
            if raise_on_error:
                raise CheckpointError(report.summary())
        return report

    def _check_chunk(self, ref: ChunkRef) -> StoreError | None:
        try:
            self.store.chunks.get(ref)
        except (CorruptChunk, MissingChunk) as exc:
            return exc
        return None

    # --- delete / gc / stats --------------------------------------------------------------

    def delete(self, ref: str) -> Manifest:
        """Remove a checkpoint's manifest; its chunks are freed by the next GC."""
        m = self.catalog.find(ref)
        self.catalog.delete(m.job, m.id)
        return m

    def gc(self, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> GcReport:
        """Delete chunks no manifest references, keeping those a live writer may still commit."""
        if grace < 0:
            raise UsageError("the GC grace period cannot be negative")
        # A callable: the streamer calls it after reading the leases, which its safety rule needs.
        result = self.store.collect_garbage(self.catalog.referenced_digests, grace, dry_run)
        return GcReport(chunks_seen=result.chunks_seen, referenced=result.referenced, deleted=result.deleted,
                        deleted_bytes=result.deleted_bytes, kept_recent=result.kept_recent,
                        live_leases=tuple(result.live_leases), grace_seconds=grace, dry_run=dry_run)

    def store_stats(self) -> StoreReport:
        """Logical vs stored bytes, chunk counts, dedup and compression ratios (stats every chunk)."""
        usage = self.catalog.chunk_usage()
        referenced = self.catalog.referenced_digests(strict=False)
        stored = self._stored_sizes(set(self.store.chunks.list_digests()))
        ref_stored = sum(s or 0 for d, s in stored.items() if d in referenced)
        garbage = {d: s for d, s in stored.items() if d not in referenced and s is not None}
        return StoreReport(
            url=self.store.url, jobs=usage.jobs, checkpoints=usage.checkpoints,
            logical_bytes=usage.logical_bytes, unique_bytes=usage.unique_bytes,
            stored_bytes=sum(s or 0 for s in stored.values()), chunk_count=len(stored),
            referenced_chunks=usage.referenced_chunks, unreferenced_chunks=len(garbage),
            unreferenced_bytes=sum(garbage.values()),
            dedup_ratio=_ratio(usage.logical_bytes, usage.unique_bytes),
            compression_ratio=_ratio(usage.chunk_bytes, ref_stored),
        )


# --- helpers --------------------------------------------------------------------------------

def open_checkpoints(settings: Settings, store_url: str | None = None, db_path: str | None = None) -> Checkpoints:
    """The Checkpoints service for `store_url` (default: config store.url), index at db.path."""
    return Checkpoints.open(settings, store_url, db_path)


class _ArchiveSource:
    """A seed-format archive by local path or URL (s3://bucket/prefix/name.tar.lz4), read as a stream."""

    def __init__(self, ref: str, settings: Settings):
        self.ref = ref
        self._backend: Backend | None = None
        if "://" in ref and not ref.startswith("file://"):
            parent, _, self._key = ref.rstrip("/").rpartition("/")
            if not self._key or parent.endswith(":/"):
                raise UsageError(f"{ref}: name an archive inside a bucket (e.g. s3://bucket/dir/name.tar.lz4)")
            self._backend = open_backend(parent, settings)
        else:
            self._path = ref.removeprefix("file://")
            if not os.path.isfile(self._path):
                raise NotFound(f"{ref}: no such archive")

    def head(self) -> bytes:
        if self._backend is not None:
            return self._backend.get_range(self._key, 0, 520)
        with open(self._path, "rb") as f:
            return f.read(520)

    def open(self) -> BinaryIO:
        return self._backend.open_read(self._key) if self._backend is not None else open(self._path, "rb")

    def size(self) -> int:
        return self._backend.stat(self._key).size if self._backend is not None else os.path.getsize(self._path)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def _member_report(member: Any) -> FileReport:
    kind = "dir" if member.isdir() else "symlink" if member.issym() else "file"
    return FileReport(path=member.name, type=kind, mode=member.mode & 0o7777,
                      size=member.size if kind == "file" else 0, mtime_ns=int(member.mtime * 1e9),
                      target=member.linkname or None)


class _Counting:
    """A write-only wrapper that reports bytes written to a progress callback."""

    def __init__(self, out: BinaryIO, progress: Progress | None):
        self._out = out
        self._progress = progress

    def write(self, data: bytes) -> int:
        n = self._out.write(data)
        if self._progress:
            self._progress(len(data))
        return n


def _give_to_owner(root: Path, m: Manifest) -> None:
    """An exported checkpoint belongs to the owner its manifest records (meta uid/gid), if any."""
    try:
        uid, gid = int(m.meta["uid"]), int(m.meta.get("gid", m.meta["uid"]))
    except (KeyError, TypeError, ValueError):
        return
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def _chunk_error(m: Manifest, path: str, exc: BaseException) -> CheckpointError:
    digest = getattr(exc, "digest", "?")
    what = "missing" if isinstance(exc, MissingChunk) else "corrupt"
    detail = str(exc).split(": ", 1)[1] if ": " in str(exc) else ""
    return CheckpointError(
        f"checkpoint {m.name}: file {path}: chunk {digest} is {what}" + (f" ({detail})" if detail else ""))


def _scan(root: Path, images: str = "") -> list[_Entry]:
    """Every entry below root, in path order; refuses what a checkpoint cannot hold."""
    if not root.is_dir():
        raise NotFound(f"{root}: no such directory") if not root.exists() else UsageError(f"{root} is not a directory")
    if not (root / images / "inventory.img").is_file():
        raise CheckpointError(f"{root} holds no CRIU images (no {images + '/' if images else ''}inventory.img)")
    entries = list(_walk(root, root))
    return sorted(entries, key=lambda e: e.rel)


def _walk(root: Path, here: Path) -> Iterator[_Entry]:
    with os.scandir(here) as it:
        for de in it:
            st = de.stat(follow_symlinks=False)
            rel = Path(de.path).relative_to(root).as_posix()
            if stat.S_ISDIR(st.st_mode):
                yield _Entry(rel, "dir", st)
                yield from _walk(root, Path(de.path))
            elif stat.S_ISREG(st.st_mode):
                yield _Entry(rel, "file", st)
            elif stat.S_ISLNK(st.st_mode):
                yield _Entry(rel, "symlink", st)
            else:
                raise CheckpointError(f"{de.path}: cannot import special files (only files, dirs, symlinks)")


def _dir_reports(root: Path) -> tuple[FileReport, ...]:
    out = []
    for e in sorted(_walk(root, root), key=lambda e: e.rel):
        target = os.readlink(root / e.rel) if e.kind == "symlink" else None
        out.append(FileReport(path=e.rel, type=e.kind, mode=stat.S_IMODE(e.st.st_mode),
                              size=e.st.st_size if e.kind == "file" else 0, mtime_ns=e.st.st_mtime_ns,
                              target=target))
    return tuple(out)


def _check_dest(dest: Path) -> None:
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise AlreadyExists(f"{dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise AlreadyExists(f"{dest} is not empty; export into a new or empty directory")


def _add_stats(a: TransferStats, b: TransferStats) -> TransferStats:
    return TransferStats(logical_bytes=a.logical_bytes + b.logical_bytes, stored_bytes=a.stored_bytes + b.stored_bytes,
                         new_chunks=a.new_chunks + b.new_chunks, reused_chunks=a.reused_chunks + b.reused_chunks)


def _transfer_meta(s: TransferStats) -> dict[str, int]:
    """Recorded in the manifest: what this checkpoint added to the store when it was written."""
    return {"logical_bytes": s.logical_bytes, "stored_bytes": s.stored_bytes,
            "new_chunks": s.new_chunks, "reused_chunks": s.reused_chunks}


def _ratio(a: int, b: int) -> float:
    return round(a / b, 3) if b else 0.0
