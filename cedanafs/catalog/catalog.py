"""The catalog: which checkpoints exist, committed as manifests in the store, indexed in SQLite.

This module owns the manifest keys (`manifests/<job>/<id>/<commit>.json`) in a store's object
namespace, the commit of a checkpoint (`commit_files`, the one manifest builder the mount and
imports share; the manifest is written last), and the SQLite index of jobs, checkpoints and
referenced chunks. The manifests in the store are the truth; the index is a cache of them that
`refresh()` syncs and `rebuild()` recreates, so a second machine pointed at the same bucket (with
its own database) sees the same jobs and checkpoints.

One identity per commit: a manifest's key carries its commit (a digest of its bytes,
`Manifest.commit`), and is written with a conditional create (`objects.create`: O_EXCL-like on
every backend). A name deleted and committed again therefore has a new key, so a refresh that
compares key listings sees the swap, however long a machine missed it: its index, its manifest
cache (keyed by key) and its GC never mistake the new checkpoint for the old one.

`objects` is anything with the streamer Backend's `get/put/create/list/delete/exists`
(structural typing: the catalog does not import the streamer); its errors are those of
cedanafs.errors (`NoSuchObject`, `ObjectExists`). Store I/O never runs under the index lock.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Protocol

from ..errors import AlreadyExists, CheckpointError, NoSuchObject, NotFound, ObjectExists, StoreError, UsageError
from .ids import check_checkpoint_name, check_job_name, is_valid_checkpoint_name, is_valid_job_name, new_checkpoint_id
from .manifest import FileEntry, Manifest, decode_manifest, encode_manifest, make_manifest

log = logging.getLogger(__name__)

MANIFEST_PREFIX = "manifests/"
SCHEMA_VERSION = 3
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # fixed width, so text order is time order in SQL
_CACHE_SIZE = 64
_FETCH_THREADS = 8
_GENERATED_ID_TRIES = 5
_COMMIT = re.compile(r"^[0-9a-f]{16}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalog_checkpoints (
    scope TEXT NOT NULL, job TEXT NOT NULL, id TEXT NOT NULL, created TEXT NOT NULL,
    parent TEXT, kind TEXT NOT NULL, host TEXT NOT NULL, size INTEGER NOT NULL,
    files INTEGER NOT NULL, chunks INTEGER NOT NULL, inline_bytes INTEGER NOT NULL, commit_id TEXT NOT NULL,
    PRIMARY KEY (scope, job, id));
CREATE INDEX IF NOT EXISTS catalog_checkpoints_created ON catalog_checkpoints (scope, created);
CREATE TABLE IF NOT EXISTS catalog_chunks (
    scope TEXT NOT NULL, job TEXT NOT NULL, id TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (scope, job, id, digest));
CREATE INDEX IF NOT EXISTS catalog_chunks_digest ON catalog_chunks (scope, digest);
CREATE TABLE IF NOT EXISTS catalog_broken (
    scope TEXT NOT NULL, key TEXT NOT NULL, error TEXT NOT NULL, PRIMARY KEY (scope, key));
"""
_TABLES = ("catalog_checkpoints", "catalog_chunks", "catalog_broken", "catalog_meta")


class ObjectStore(Protocol):
    """What the catalog needs of a store; the streamer's Backend has it."""

    def get(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> None: ...
    def list(self, prefix: str = "") -> Iterable[str]: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


@dataclass(frozen=True)
class CheckpointInfo:
    """One row of the index: a committed checkpoint, without its file list."""

    job: str
    id: str
    created: datetime
    parent: str | None
    kind: str
    host: str
    size: int
    files: int
    chunks: int
    commit: str = ""  # the commit this name stands for now (Manifest.commit)

    @property
    def name(self) -> str:
        return f"{self.job}/{self.id}"


@dataclass(frozen=True)
class JobInfo:
    """A job as the catalog knows it: its checkpoints' count, the newest one, their logical bytes."""

    name: str
    checkpoints: int
    latest: str
    size: int


@dataclass(frozen=True)
class ChunkUsage:
    """What all committed checkpoints of a store reference, from the index.

    logical_bytes: the sum of every checkpoint's file sizes; unique_bytes: plain bytes of the
    distinct chunks plus the inline bytes (stored in manifests, never deduplicated).
    """

    checkpoints: int
    jobs: int
    logical_bytes: int
    referenced_chunks: int
    chunk_bytes: int
    inline_bytes: int

    @property
    def unique_bytes(self) -> int:
        return self.chunk_bytes + self.inline_bytes


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh changed in the index."""

    added: int = 0
    removed: int = 0
    broken: int = 0
    skipped: bool = False


def manifest_key(job: str, checkpoint_id: str, commit: str = "") -> str:
    """`manifests/<job>/<id>/<commit>.json`; without a commit, the key of an older store's manifest."""
    if commit:
        return f"{MANIFEST_PREFIX}{job}/{checkpoint_id}/{commit}.json"
    return f"{MANIFEST_PREFIX}{job}/{checkpoint_id}.json"


def parse_manifest_key(key: str) -> tuple[str, str, str] | None:
    """(job, id, commit) for a manifest key, None for anything else under the prefix (temp files, junk).

    The commit is "" for an older store's `manifests/<job>/<id>.json`, still read as it is.
    """
    if not key.startswith(MANIFEST_PREFIX):
        key = MANIFEST_PREFIX + key.lstrip("/")
    parts = key[len(MANIFEST_PREFIX):].split("/")
    if not parts[-1].endswith(".json") or len(parts) not in (2, 3):
        return None
    parts[-1] = parts[-1][: -len(".json")]
    job, cid, commit = (parts + [""])[:3]
    if not (is_valid_job_name(job) and is_valid_checkpoint_name(cid)) or (commit and not _COMMIT.match(commit)):
        return None
    return job, cid, commit


def _fmt_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime(_TIME)


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, _TIME).replace(tzinfo=timezone.utc)


class Catalog:
    """Jobs and checkpoints of one store, committed as manifests and indexed in SQLite.

    Thread-safe. `scope` separates stores that share one database file (defaults to the store's
    `url` attribute); `refresh_interval` is how stale the index may be before a query lists the
    store again (0: every query lists it once, which is what a CLI call wants).
    """

    def __init__(self, objects: ObjectStore, db_path: str | Path = ":memory:", *,
                 scope: str | None = None, refresh_interval: float = 0.0, serve_stale: bool = False,
                 pool: Executor | None = None):
        self._objects = objects
        # Manifest fetches run on the store's own pool when given (one budget for store traffic).
        self._pool = pool
        # A long-lived owner (the daemon) answers queries from the index while the store is down.
        self._serve_stale = serve_stale
        self._offline_until = 0.0
        self._scope = scope if scope is not None else str(getattr(objects, "url", "") or "")
        self._refresh_interval = refresh_interval
        self._lock = threading.RLock()  # the database only: never held across store I/O
        self._refresh_lock = threading.Lock()  # one refresh at a time (it lists the store)
        self._cache_lock = threading.Lock()  # separate: refresh loads manifests on worker threads
        self._refreshed_at: float | None = None
        self._cache: OrderedDict[str, Manifest] = OrderedDict()
        self._db = _open_db(db_path)

    # --- commit and load --------------------------------------------------------------------

    def commit_files(self, job: str, files: Iterable[FileEntry], *, name: str | None = None, kind: str,
                     host: str, meta: dict[str, Any] | None = None, created: datetime | None = None) -> Manifest:
        """Build a checkpoint's manifest and commit it: the one builder the mount and imports share.

        Its parent is the job's newest checkpoint; without a `name` it gets a fresh id (another one
        if a concurrent writer took it). Every chunk the files reference must be durable already.
        """
        files = list(files)
        for attempt in range(1 if name else _GENERATED_ID_TRIES):
            parent = self.latest(job)
            kw = {"created": created} if created is not None else {}
            manifest = make_manifest(job, name or new_checkpoint_id(), files, kind=kind, host=host,
                                     meta=dict(meta or {}), parent=parent.id if parent else None, **kw)
            try:
                return self.commit(manifest)
            except AlreadyExists:
                if name:
                    raise
                log.info("checkpoint id %s was taken; trying another (attempt %d)", manifest.id, attempt + 1)
        raise AlreadyExists(f"could not find a free checkpoint id for job {job}")

    def commit(self, manifest: Manifest) -> Manifest:
        """Make the checkpoint exist: create its manifest, after all its chunks. The commit point.

        A name that exists is refused (AlreadyExists), so a commit never changes. The key carries
        the commit and is created conditionally; if another writer committed the same name at the
        same moment, both see it afterwards and withdraw (never two manifests for one name).
        """
        data = encode_manifest(manifest)
        key = manifest_key(manifest.job, manifest.id, manifest.commit)
        if self._keys_of(manifest.job, manifest.id):
            raise AlreadyExists(f"checkpoint {manifest.name} already exists")
        try:
            self._objects.create(key, data)
        except ObjectExists:
            raise AlreadyExists(f"checkpoint {manifest.name} already exists") from None
        if [k for k in self._keys_of(manifest.job, manifest.id) if k != key]:
            self._objects.delete(key)
            raise AlreadyExists(f"checkpoint {manifest.name} was committed by another writer at the same time")
        self._remember(key, manifest)
        self._index(key, manifest)
        log.info("committed checkpoint %s (%d files, %d bytes)", manifest.name, len(manifest.files), manifest.size)
        return manifest

    def load(self, job: str, checkpoint_id: str, commit: str = "") -> Manifest:
        """The manifest of `job/id`, read from the store (NotFound if it is not committed); with
        `commit`, that commit's manifest and no other (NotFound if the name now stands for another)."""
        check_job_name(job)
        check_checkpoint_name(checkpoint_id)
        if commit:
            return self._load_key(manifest_key(job, checkpoint_id, commit))
        indexed = self._indexed_key(job, checkpoint_id)
        if indexed is not None:
            try:
                return self._load_key(indexed)
            except NotFound:
                pass  # deleted, maybe committed again, since the last refresh: ask the store
        keys = self._keys_of(job, checkpoint_id)
        if not keys:
            raise NotFound(f"no checkpoint {job}/{checkpoint_id} in the store")
        return self._load_key(keys[0])

    def exists(self, job: str, checkpoint_id: str) -> bool:
        return bool(self._keys_of(check_job_name(job), check_checkpoint_name(checkpoint_id)))

    def _keys_of(self, job: str, checkpoint_id: str) -> list[str]:
        """The manifest keys of one name in the store (one, but for a moment during a commit race)."""
        keys = [k for k in self._objects.list(f"{MANIFEST_PREFIX}{job}/{checkpoint_id}")
                if (parse_manifest_key(k) or ("", "", ""))[:2] == (job, checkpoint_id)]
        return sorted(keys)

    def _indexed_key(self, job: str, checkpoint_id: str) -> str | None:
        rows = self._query("SELECT commit_id FROM catalog_checkpoints WHERE scope = ? AND job = ? AND id = ?",
                           [self._scope, job, checkpoint_id])
        return manifest_key(job, checkpoint_id, rows[0][0]) if rows else None

    def find(self, ref: str) -> Manifest:
        """Resolve `job/id`, `job/latest`, an id, a unique id prefix, or a job name (its latest)."""
        ref = ref.strip().strip("/")
        if not ref:
            raise UsageError("empty checkpoint reference")
        if "/" in ref:
            return self._find_in_job(*ref.split("/", 1))
        matches = self._match_prefix(ref, job=None)
        if len(matches) == 1:
            return self.load(*matches[0])
        if len(matches) > 1:
            raise _ambiguous(ref, matches)
        newest = self.latest(ref) if is_valid_job_name(ref) else None
        if newest is not None:
            return self.load(ref, newest.id)
        raise NotFound(f"no checkpoint {ref!r} in the store")

    def _find_in_job(self, job: str, cid: str) -> Manifest:
        check_job_name(job)
        if cid == "latest":
            info = self.latest(job)
            if info is None:
                raise NotFound(f"job {job!r} has no checkpoints")
            return self.load(job, info.id)
        if self.exists(job, cid):
            return self.load(job, cid)
        matches = self._match_prefix(cid, job=job)
        if len(matches) == 1:
            return self.load(*matches[0])
        if len(matches) > 1:
            raise _ambiguous(f"{job}/{cid}", matches)
        raise NotFound(f"no checkpoint {job}/{cid} in the store")

    def _match_prefix(self, prefix: str, job: str | None) -> list[tuple[str, str]]:
        self._auto_refresh()
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql = "SELECT job, id FROM catalog_checkpoints WHERE scope = ? AND id LIKE ? ESCAPE '\\'"
        args: list[Any] = [self._scope, like]
        if job is not None:
            sql += " AND job = ?"
            args.append(job)
        rows = self._query(sql + " ORDER BY created DESC", args)
        exact = [(j, i) for j, i in rows if i == prefix]
        return exact or [(j, i) for j, i in rows]

    # --- queries ----------------------------------------------------------------------------

    def jobs(self) -> list[JobInfo]:
        """Every job with at least one committed checkpoint, by name."""
        self._auto_refresh()
        rows = self._query(
            "SELECT job, COUNT(*), SUM(size) FROM catalog_checkpoints WHERE scope = ? GROUP BY job ORDER BY job",
            [self._scope],
        )
        return [JobInfo(name=j, checkpoints=n, latest=self._latest_id(j), size=s or 0) for j, n, s in rows]

    def checkpoints(self, job: str | None = None) -> list[CheckpointInfo]:
        """Committed checkpoints, newest first; of one job when given."""
        self._auto_refresh()
        sql = ("SELECT job, id, created, parent, kind, host, size, files, chunks, commit_id FROM catalog_checkpoints"
               " WHERE scope = ?")
        args: list[Any] = [self._scope]
        if job is not None:
            sql += " AND job = ?"
            args.append(check_job_name(job))
        rows = self._query(sql + " ORDER BY created DESC, id DESC", args)
        return [_info(row) for row in rows]

    def latest(self, job: str) -> CheckpointInfo | None:
        """The newest committed checkpoint of a job, or None when it has none."""
        found = self.checkpoints(job)
        return found[0] if found else None

    def _latest_id(self, job: str) -> str:
        rows = self._query(
            "SELECT id FROM catalog_checkpoints WHERE scope = ? AND job = ? ORDER BY created DESC, id DESC LIMIT 1",
            [self._scope, job],
        )
        return rows[0][0] if rows else ""

    def referenced_digests(self, strict: bool = True) -> set[str]:
        """Every chunk digest some committed manifest references, as of a fresh listing.

        Strict (what GC uses): raises CheckpointError if any manifest cannot be read, because GC
        must not run on a partial view or it would delete the chunks of the unreadable checkpoint.
        """
        self.refresh()
        broken = self._query("SELECT key, error FROM catalog_broken WHERE scope = ?", [self._scope])
        if broken and strict:
            key, error = broken[0]
            raise CheckpointError(
                f"{len(broken)} manifest(s) cannot be read (first: {key}: {error}); refusing to compute"
                " the referenced chunks"
            )
        rows = self._query("SELECT DISTINCT digest FROM catalog_chunks WHERE scope = ?", [self._scope])
        return {r[0] for r in rows}

    def chunk_usage(self) -> ChunkUsage:
        """Totals for `store stats`: logical bytes and the distinct chunks all checkpoints use."""
        self._auto_refresh()
        n, jobs, logical, inline = self._query(
            "SELECT COUNT(*), COUNT(DISTINCT job), COALESCE(SUM(size), 0), COALESCE(SUM(inline_bytes), 0)"
            " FROM catalog_checkpoints WHERE scope = ?", [self._scope])[0]
        chunks, chunk_bytes = self._query(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT digest, MAX(size) AS size FROM catalog_chunks"
            " WHERE scope = ? GROUP BY digest)", [self._scope])[0]
        return ChunkUsage(checkpoints=n, jobs=jobs, logical_bytes=logical, referenced_chunks=chunks,
                          chunk_bytes=chunk_bytes, inline_bytes=inline)

    def sharing(self, job: str, checkpoint_id: str) -> dict[str, int]:
        """For each chunk of `job/id`: how many committed checkpoints reference it (1 = only this)."""
        self._auto_refresh()
        rows = self._query(
            "SELECT c.digest, COUNT(*) FROM catalog_chunks c JOIN catalog_chunks o"
            " ON o.scope = c.scope AND o.digest = c.digest"
            " WHERE c.scope = ? AND c.job = ? AND c.id = ? GROUP BY c.digest",
            [self._scope, job, checkpoint_id])
        return dict(rows)

    def broken(self) -> list[tuple[str, str]]:
        """(key, error) of every manifest in the store that could not be read at the last refresh."""
        return [tuple(r) for r in self._query(
            "SELECT key, error FROM catalog_broken WHERE scope = ? ORDER BY key", [self._scope])]

    # --- delete -----------------------------------------------------------------------------

    def delete(self, job: str, checkpoint_id: str) -> None:
        """Remove a checkpoint's manifest; its chunks stay until GC finds them unreferenced."""
        keys = self._keys_of(check_job_name(job), check_checkpoint_name(checkpoint_id))
        if not keys:
            raise NotFound(f"no checkpoint {job}/{checkpoint_id} in the store")
        for key in keys:
            self._objects.delete(key)
            self._unindex(key)
        log.info("deleted checkpoint %s/%s", job, checkpoint_id)

    # --- index maintenance --------------------------------------------------------------------

    def refresh(self, max_age: float = 0.0) -> RefreshResult:
        """Sync the index with the manifests in the store: one listing, then only what changed."""
        with self._refresh_lock:
            if (max_age > 0 and self._refreshed_at is not None
                    and time.monotonic() - self._refreshed_at < max_age):
                return RefreshResult(skipped=True)
            started = time.monotonic()
            present = self._list_keys()
            indexed = self._indexed_keys()
            removed = indexed - present
            for key in removed:
                self._unindex(key)
            added, broken = self._fetch_and_index(sorted(present - indexed))
            self._refreshed_at = started
        if added or removed or broken:
            log.info("catalog refresh: %d added, %d removed, %d unreadable", added, len(removed), broken)
        return RefreshResult(added=added, removed=len(removed), broken=broken)

    def rebuild(self) -> RefreshResult:
        """Forget this store's index and recreate it from the manifests in the store."""
        with self._refresh_lock, self._lock, self._db:
            for table in ("catalog_checkpoints", "catalog_chunks", "catalog_broken"):
                self._db.execute(f"DELETE FROM {table} WHERE scope = ?", [self._scope])
            with self._cache_lock:
                self._cache.clear()
            self._refreshed_at = None
        return self.refresh()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _auto_refresh(self) -> None:
        """Refresh before a query, unless recent; with serve_stale and the store unreachable, answer
        from the index.

        The store's own retries have run by then; queries go on from what the index last saw (the
        checkpoints do not vanish because a network is down) and the next try waits a while.
        """
        if not self._serve_stale:
            self.refresh(max_age=self._refresh_interval)
            return
        if time.monotonic() < self._offline_until:
            return
        try:
            self.refresh(max_age=self._refresh_interval)
        except StoreError as exc:
            self._offline_until = time.monotonic() + max(10.0, self._refresh_interval)
            log.warning("cannot list the store, answering from the local index: %s", exc)

    def _list_keys(self) -> set[str]:
        keys = set()
        for key in self._objects.list(MANIFEST_PREFIX):
            parsed = parse_manifest_key(key)
            if parsed is not None:
                keys.add(manifest_key(*parsed))
        return keys

    def _indexed_keys(self) -> set[str]:
        rows = self._query("SELECT job, id, commit_id FROM catalog_checkpoints WHERE scope = ?", [self._scope])
        keys = {manifest_key(j, i, c) for j, i, c in rows}
        keys |= {r[0] for r in self._query("SELECT key FROM catalog_broken WHERE scope = ?", [self._scope])}
        return keys

    def _fetch_and_index(self, keys: list[str]) -> tuple[int, int]:
        """Load new manifests (in parallel: over S3 each is a round trip) and index them."""
        if not keys:
            return 0, 0
        if self._pool is not None:
            results = list(self._pool.map(self._try_load, keys))
        else:
            with ThreadPoolExecutor(max_workers=min(_FETCH_THREADS, len(keys))) as pool:
                results = list(pool.map(self._try_load, keys))
        added = broken = 0
        named: set[tuple[str, str]] = set()
        for key, (manifest, error) in zip(keys, results):
            if manifest is not None and (manifest.job, manifest.id) in named:
                continue  # a commit race's loser, about to withdraw: the first key stands
            if manifest is not None:
                named.add((manifest.job, manifest.id))
                self._index(key, manifest)
                added += 1
            elif error is not None:
                log.warning("cannot read manifest %s: %s", key, error)
                self._mark_broken(key, error)
                broken += 1
        return added, broken

    def _try_load(self, key: str) -> tuple[Manifest | None, str | None]:
        try:
            return self._load_key(key), None
        except NotFound:
            return None, None  # deleted between the listing and the read
        except CheckpointError as exc:
            return None, str(exc)

    def _load_key(self, key: str) -> Manifest:
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        job, cid, commit = parse_manifest_key(key) or ("?", "?", "")
        try:
            data = self._objects.get(key)
        except NoSuchObject:
            raise NotFound(f"no checkpoint {job}/{cid} in the store") from None
        manifest = decode_manifest(data, where=f"{job}/{cid}")
        if (manifest.job, manifest.id) != (job, cid) or (commit and manifest.commit != commit):
            raise CheckpointError(
                f"manifest at {key} describes checkpoint {manifest.name} (commit {manifest.commit}),"
                f" not {job}/{cid}{f' (commit {commit})' if commit else ''}")
        self._remember(key, manifest)
        return manifest

    def _remember(self, key: str, manifest: Manifest) -> None:
        with self._cache_lock:
            self._cache[key] = manifest
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _index(self, key: str, m: Manifest) -> None:
        chunks: dict[str, int] = {}
        for f in m.files:
            for c in f.chunks:
                chunks[c.digest] = c.size
        commit = (parse_manifest_key(key) or ("", "", ""))[2]
        with self._lock, self._db:
            self._db.execute("DELETE FROM catalog_broken WHERE scope = ? AND key = ?", [self._scope, key])
            self._db.execute(
                "INSERT OR REPLACE INTO catalog_checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [self._scope, m.job, m.id, _fmt_time(m.created), m.parent, m.kind, m.host, m.size,
                 len(m.files), len(chunks), _inline_bytes(m), commit],
            )
            self._db.execute("DELETE FROM catalog_chunks WHERE scope = ? AND job = ? AND id = ?",
                             [self._scope, m.job, m.id])
            self._db.executemany(
                "INSERT INTO catalog_chunks VALUES (?, ?, ?, ?, ?)",
                [(self._scope, m.job, m.id, d, s) for d, s in chunks.items()],
            )

    def _unindex(self, key: str) -> None:
        job, cid, commit = parse_manifest_key(key) or ("", "", "")
        with self._cache_lock:
            self._cache.pop(key, None)
        with self._lock, self._db:
            gone = self._db.execute(
                "DELETE FROM catalog_checkpoints WHERE scope = ? AND job = ? AND id = ? AND commit_id = ?",
                [self._scope, job, cid, commit]).rowcount
            if gone:  # another commit of the name may be indexed already: its chunks stay
                self._db.execute("DELETE FROM catalog_chunks WHERE scope = ? AND job = ? AND id = ?",
                                 [self._scope, job, cid])
            self._db.execute("DELETE FROM catalog_broken WHERE scope = ? AND key = ?", [self._scope, key])

    def _mark_broken(self, key: str, error: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO catalog_broken VALUES (?, ?, ?)", [self._scope, key, error])

    def _query(self, sql: str, args: list[Any]) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()


def _inline_bytes(m: Manifest) -> int:
    return sum(f.size for f in m.files if f.content is not None and f.content.inline is not None)


def _info(row: tuple) -> CheckpointInfo:
    job, cid, created, parent, kind, host, size, files, chunks, commit = row
    return CheckpointInfo(job=job, id=cid, created=_parse_time(created), parent=parent, kind=kind,
                          host=host, size=size, files=files, chunks=chunks, commit=commit)


def _ambiguous(ref: str, matches: list[tuple[str, str]]) -> UsageError:
    names = ", ".join(f"{j}/{i}" for j, i in matches[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    return UsageError(f"checkpoint reference {ref!r} is ambiguous: it matches {names}{more}")


def _open_db(db_path: str | Path) -> sqlite3.Connection:
    """Open the index, in WAL mode so the CLI can read while the daemon writes; recreate it when
    its schema is not this version's (it is only an index of the manifests, so nothing is lost)."""
    path = str(db_path)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    db.execute("PRAGMA busy_timeout = 30000")
    if path != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
    with db:
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM catalog_meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            if row is not None:
                log.warning("catalog index schema %s is not %d: recreating it", row[0], SCHEMA_VERSION)
                for table in _TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                db.executescript(_SCHEMA)
            db.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('schema', ?)", [str(SCHEMA_VERSION)])
    return db
