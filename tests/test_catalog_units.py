"""Units of cedanafs.catalog: ids, manifest JSON and validation, the Catalog over an object store."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cedanafs.catalog import (Catalog, FileEntry, Manifest, decode_manifest, make_manifest, manifest_key,
                              new_checkpoint_id, parse_manifest_key)
from cedanafs.catalog.ids import check_checkpoint_name, check_job_name, id_time
from cedanafs.errors import AlreadyExists, CheckpointError, NoSuchObject, NotFound, ObjectExists, UsageError
from cedanafs.streamer.backends import open_backend
from cedanafs.streamer.backends.memory import forget
from cedanafs.types import ChunkRef, FileContent

pytestmark = pytest.mark.unit


class DictObjects:
    """The smallest object store the catalog accepts: a dict behind a lock, with atomic put and create."""

    def __init__(self, url: str = "dict://test"):
        self.url = url
        self.data: dict[str, bytes] = {}
        self.lists = 0
        self.gets = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            self.gets += 1
            if key not in self.data:
                raise NoSuchObject(key)
            return self.data[key]

    def put(self, key, data):
        with self._lock:
            self.data[key] = bytes(data)

    def create(self, key, data):
        with self._lock:
            if key in self.data:
                raise ObjectExists(key)
            self.data[key] = bytes(data)

    def list(self, prefix=""):
        with self._lock:
            self.lists += 1
            return [k for k in self.data if k.startswith(prefix)]

    def delete(self, key):
        with self._lock:
            self.data.pop(key, None)

    def exists(self, key):
        with self._lock:
            return key in self.data


def _memory_backend(name):
    return open_backend(f"memory://{name}")


@pytest.fixture(params=["dict", "memory"])
def objects(request):
    if request.param == "dict":
        yield DictObjects()
        return
    # A name of its own, forgotten after: named after id(request), a later test could get the
    # name of an earlier one (ids are reused) and find its manifests there.
    name = f"catalog-{uuid.uuid4().hex}"
    yield _memory_backend(name)
    forget(name)


def _chunked(path, sizes, mode=0o600, mtime_ns=1_700_000_000_123_456_789):
    refs = tuple(ChunkRef(f"{path.replace('/', '_').replace('.', '_')}{i:02d}" + "0" * 40, s)
                 for i, s in enumerate(sizes))
    return FileEntry(path=path, mode=mode, mtime_ns=mtime_ns, content=FileContent(size=sum(sizes), chunks=refs))


def _manifest(job="j1", cid=None, created=None, files=None, **kw):
    files = files if files is not None else [
        _chunked("pages-1.img", [4096, 100]),
        FileEntry(path="inventory.img", mode=0o644, mtime_ns=5, content=FileContent(size=3, inline=b"\x00\x01\x02")),
        FileEntry(path="sub/dir/x.img", content=FileContent(size=0, inline=b"")),
        FileEntry(path="sub", type="dir", mode=0o755),
        FileEntry(path="link", type="symlink", mode=0o777, target="inventory.img"),
    ]
    return make_manifest(job, cid or new_checkpoint_id(created), files, created=created or datetime.now(timezone.utc),
                         kind="import", host="h1", meta={"pid": 42, "note": "x"}, **kw)


# --- ids -------------------------------------------------------------------------------------

def test_ids_sort_by_time():
    t0 = datetime(2026, 11, 27, 3, 15, 2, tzinfo=timezone.utc)
    ids = [new_checkpoint_id(t0 + timedelta(seconds=s)) for s in (3600 * 24 * 40, 0, 59, 3600, 1)]
    assert sorted(ids) == [ids[1], ids[4], ids[2], ids[3], ids[0]]
    assert ids[1].startswith("20261127T031502.000Z-") and len(ids[1]) == len("20261127T031502.000Z-3f9a")
    assert id_time(ids[1]) == t0
    assert id_time("20261127T031502Z-3f9a") == t0  # an id of an earlier version: to the second
    # Two checkpoints of one job a few milliseconds apart sort in the order they were taken.
    close = [new_checkpoint_id(t0 + timedelta(milliseconds=ms)) for ms in (998, 7, 250)]
    assert sorted(close) == [close[1], close[2], close[0]]
    assert id_time(close[2]) == t0 + timedelta(milliseconds=250)
    assert id_time("my-name") is None
    assert len({new_checkpoint_id(t0) for _ in range(200)}) > 150  # random suffix


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".", "a..b", "-x", "x y", "é", "a" * 129, "x\0"])
def test_bad_names_refused(bad):
    with pytest.raises(UsageError):
        check_job_name(bad)
    with pytest.raises(UsageError):
        check_checkpoint_name(bad)


def test_good_names_and_reserved():
    for good in ("train1", "a.b_c-d", "20261127T031502Z-3f9a", "X" * 128):
        assert check_job_name(good) == good
        assert check_checkpoint_name(good) == good
    with pytest.raises(UsageError, match="reserved"):
        check_checkpoint_name("latest")


# --- manifest --------------------------------------------------------------------------------

def test_manifest_round_trip():
    m = _manifest(parent="20260101T000000Z-abcd")
    data = m.encode()
    back = decode_manifest(data, "j1/x")
    assert back == m
    assert back.size == 4196 + 3
    assert back.file("inventory.img").content.inline == b"\x00\x01\x02"
    assert back.file("link").target == "inventory.img"
    assert [f.path for f in back.files] == sorted(f.path for f in back.files)
    assert len(back.digests()) == 2
    obj = json.loads(data)
    assert obj["format"] == 1 and obj["files"][0]["inline"] == "AAEC"


def test_unknown_format_version_is_a_clear_error():
    obj = json.loads(_manifest(cid="c1").encode())
    obj["format"] = 7
    with pytest.raises(CheckpointError, match=r"j1/c1 has format version 7.*only version 1"):
        decode_manifest(json.dumps(obj).encode(), "j1/c1")


@pytest.mark.parametrize("mutate", [
    lambda o: o.update(extra=1),
    lambda o: o.pop("job"),
    lambda o: o.update(job="a/b"),
    lambda o: o.update(created="yesterday"),
    lambda o: o.update(created="2026-01-01T00:00:00"),
    lambda o: o["files"][1].update(target=None),      # symlink without target
    lambda o: o["files"][3].update(size=0, inline=""),  # dir with content
    lambda o: o["files"][0].update(path="../etc/passwd"),
    lambda o: o["files"][0].update(path="/abs"),
    lambda o: o["files"][0].update(path="a//b"),
    lambda o: o["files"][0].update(mode=True),
    lambda o: o["files"][0].update(type="fifo"),
    lambda o: o["files"][0].update(inline="!!!"),
    lambda o: o["files"][2].update(size=5),          # chunk sizes no longer add up
    lambda o: o["files"][2]["chunks"][0].__setitem__(0, "../../x"),
    lambda o: o["files"].append(dict(o["files"][0])),  # duplicate path
    lambda o: o["files"][0].update(bogus=1),
])
def test_manifest_validation(mutate):
    obj = json.loads(_manifest(cid="c1").encode())
    mutate(obj)
    with pytest.raises(CheckpointError, match="j1/c1"):
        decode_manifest(json.dumps(obj).encode(), "j1/c1")


def test_not_json_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="not valid JSON"):
        decode_manifest(b"{", "j/c")


def test_make_manifest_validates():
    with pytest.raises(CheckpointError):
        make_manifest("j", "c", [FileEntry(path="a", content=None)])


def test_manifest_keys():
    commit = "0123456789abcdef"
    assert manifest_key("j", "c", commit) == f"manifests/j/c/{commit}.json"
    assert parse_manifest_key(f"manifests/j/c/{commit}.json") == ("j", "c", commit)
    assert manifest_key("j", "c") == "manifests/j/c.json"  # an older store's key: still read
    assert parse_manifest_key("manifests/j/c.json") == ("j", "c", "")
    assert parse_manifest_key("manifests/j/c.json.tmp123") is None
    assert parse_manifest_key("manifests/j/x/c.json") is None  # "c" is no commit
    assert parse_manifest_key(f"manifests/j/x/y/{commit}.json") is None


# --- catalog ---------------------------------------------------------------------------------

def test_commit_load_list_latest_delete(objects, tmp_path):
    cat = Catalog(objects, tmp_path / "db.sqlite")
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    a = cat.commit(_manifest("j1", created=t0))
    b = cat.commit(_manifest("j1", created=t0 + timedelta(seconds=5), parent=a.id))
    c = cat.commit(_manifest("j2", cid="named", created=t0 + timedelta(seconds=2)))
    assert cat.load("j1", a.id) == a
    assert [i.id for i in cat.checkpoints()] == [b.id, c.id, a.id]
    assert [i.id for i in cat.checkpoints("j1")] == [b.id, a.id]
    info = cat.checkpoints("j1")[0]
    assert (info.size, info.files, info.chunks, info.parent, info.kind, info.host) == (4199, 5, 2, a.id, "import", "h1")
    assert cat.latest("j1").id == b.id and cat.latest("nojob") is None
    assert [(j.name, j.checkpoints, j.latest) for j in cat.jobs()] == [("j1", 2, b.id), ("j2", 1, "named")]
    with pytest.raises(AlreadyExists):
        cat.commit(a)
    cat.delete("j1", b.id)
    assert cat.latest("j1").id == a.id
    with pytest.raises(NotFound):
        cat.load("j1", b.id)
    with pytest.raises(NotFound):
        cat.delete("j1", b.id)
    assert not [k for k in objects.list("manifests/") if b.id in k]


def test_find(objects):
    cat = Catalog(objects)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    a = cat.commit(_manifest("j1", cid="20260101T000000Z-aaaa", created=t0))
    b = cat.commit(_manifest("j1", cid="20260101T000000Z-aabb", created=t0 + timedelta(seconds=1)))
    c = cat.commit(_manifest("j2", cid="zeta", created=t0))
    assert cat.find("20260101T000000Z-aaaa") == a
    assert cat.find("20260101T000000Z-aab") == b
    assert cat.find("j1/20260101T000000Z-aaa") == a
    assert cat.find("j1/latest") == b
    assert cat.find("j1") == b
    assert cat.find("zet") == c
    with pytest.raises(UsageError, match="ambiguous"):
        cat.find("20260101T000000Z-aa")
    with pytest.raises(NotFound):
        cat.find("nothing")
    with pytest.raises(NotFound):
        cat.find("j2/nothing")


def test_concurrent_committers_get_distinct_ids(objects):
    cat = Catalog(objects)
    errors, ids = [], []

    def writer():
        try:
            for _ in range(10):
                ids.append(cat.commit(_manifest("shared")).id)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(set(ids)) == 40
    assert len(cat.checkpoints("shared")) == 40
    assert sorted(i.id for i in Catalog(objects).checkpoints("shared")) == sorted(ids)


def test_second_catalog_on_same_objects_sees_the_same(objects, tmp_path):
    one = Catalog(objects, tmp_path / "one.db")
    two = Catalog(objects, tmp_path / "two.db")
    a = one.commit(_manifest("j1"))
    assert [i.id for i in two.checkpoints()] == [a.id]
    assert two.load("j1", a.id) == a
    two.delete("j1", a.id)
    assert one.checkpoints() == []
    b = two.commit(_manifest("j3"))
    assert [j.name for j in one.jobs()] == ["j3"] and one.find(b.id) == b


def test_refresh_is_cheap_when_nothing_changed(tmp_path):
    objects = DictObjects()
    cat = Catalog(objects, tmp_path / "db")
    for _ in range(5):
        cat.commit(_manifest("j"))
    other = Catalog(objects, tmp_path / "other.db")
    assert other.refresh().added == 5
    gets, lists = objects.gets, objects.lists
    result = other.refresh()
    assert (result.added, result.removed) == (0, 0)
    assert objects.gets == gets and objects.lists == lists + 1  # one listing, no manifest reads
    assert other.refresh(max_age=60).skipped and objects.lists == lists + 1


def test_rebuild_and_index_persistence(tmp_path):
    objects = DictObjects()
    cat = Catalog(objects, tmp_path / "db")
    ids = {cat.commit(_manifest("j")).id for _ in range(3)}
    cat.close()
    reopened = Catalog(objects, tmp_path / "db")
    assert {i.id for i in reopened.checkpoints()} == ids
    # A manifest removed behind the catalog's back disappears at the next refresh.
    gone = sorted(ids)[0]
    del objects.data[next(k for k in objects.data if gone in k)]
    assert reopened.refresh().removed == 1
    assert reopened.rebuild().added == 2
    assert {i.id for i in reopened.checkpoints()} == ids - {gone}


def test_scopes_keep_stores_apart_in_one_db(tmp_path):
    db = tmp_path / "db"
    a, b = DictObjects("dict://a"), DictObjects("dict://b")
    Catalog(a, db).commit(_manifest("ja"))
    Catalog(b, db).commit(_manifest("jb"))
    assert [j.name for j in Catalog(a, db).jobs()] == ["ja"]
    assert [j.name for j in Catalog(b, db).jobs()] == ["jb"]


@pytest.mark.expect_warnings
def test_referenced_digests_and_unreadable_manifest(tmp_path):
    objects = DictObjects()
    cat = Catalog(objects, tmp_path / "db")
    m1 = cat.commit(_manifest("j"))
    m2 = cat.commit(_manifest("k", files=[_chunked("other.img", [10])]))
    assert cat.referenced_digests() == m1.digests() | m2.digests()
    obj = json.loads(m1.encode())
    obj["format"] = 99
    obj["id"] = "future"
    objects.put(manifest_key("j", "future"), json.dumps(obj).encode())
    assert cat.refresh().broken == 1
    assert [i.id for i in cat.checkpoints("j")] == [m1.id]  # listing still works
    with pytest.raises(CheckpointError, match="format version 99"):
        cat.load("j", "future")
    with pytest.raises(CheckpointError, match="cannot be read"):
        cat.referenced_digests()  # GC must not run on a partial view


def test_manifest_under_wrong_key_is_refused(tmp_path):
    objects = DictObjects()
    cat = Catalog(objects, tmp_path / "db")
    m = _manifest("j", cid="real")
    objects.put(manifest_key("j", "fake"), m.encode())
    with pytest.raises(CheckpointError, match="describes checkpoint j/real"):
        cat.load("j", "fake")


@pytest.mark.expect_warnings
def test_schema_version_mismatch_recreates_index(tmp_path):
    import sqlite3
    objects = DictObjects()
    Catalog(objects, tmp_path / "db").commit(_manifest("j"))
    db = sqlite3.connect(tmp_path / "db")
    with db:
        db.execute("UPDATE catalog_meta SET value = '0' WHERE key = 'schema'")
    db.close()
    cat = Catalog(objects, tmp_path / "db")
    assert len(cat.checkpoints()) == 1
    assert sqlite3.connect(tmp_path / "db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_chunk_usage_and_sharing(tmp_path):
    cat = Catalog(DictObjects(), tmp_path / "db")
    a = cat.commit(_manifest("j", files=[_chunked("a.img", [100, 200]),
                                         FileEntry(path="i", content=FileContent(size=2, inline=b"hi"))]))
    b = cat.commit(_manifest("k", files=[_chunked("a.img", [100, 200]), _chunked("b.img", [50])]))
    usage = cat.chunk_usage()
    assert (usage.checkpoints, usage.jobs, usage.logical_bytes) == (2, 2, 302 + 350)
    assert (usage.referenced_chunks, usage.unique_bytes) == (3, 350 + 2)
    shared = cat.sharing("k", b.id)
    assert sorted(shared.values()) == [1, 2, 2]
    assert set(cat.sharing("j", a.id).values()) == {2}


def test_refresh_notices_a_name_committed_again(tmp_path):
    """A name deleted and committed again behind a catalog's back is a new commit to its refresh:
    its index (what its GC keeps) holds the new chunks, never the old ones."""
    objects = DictObjects()
    one, two = Catalog(objects, tmp_path / "one.db"), Catalog(objects, tmp_path / "two.db")
    old = one.commit(_manifest("j", cid="c1", files=[_chunked("a.img", [10, 20])]))
    assert two.load("j", "c1") == old and two.referenced_digests() == old.digests()
    one.delete("j", "c1")
    new = one.commit(_manifest("j", cid="c1", files=[_chunked("b.img", [30])]))
    assert new.commit != old.commit
    result = two.refresh()
    assert (result.added, result.removed) == (1, 1)
    assert two.referenced_digests() == new.digests()
    assert two.load("j", "c1") == new and two.checkpoints("j")[0].commit == new.commit
    with pytest.raises(NotFound):
        two.load("j", "c1", old.commit)  # the old commit is gone, whatever is cached


def test_commit_race_leaves_one_manifest(tmp_path):
    """Two writers create the same name at once: the one that sees the other withdraws."""

    class Racing(DictObjects):
        def create(self, key, data):
            super().create(key, data)
            if not key.endswith("/0000000000000000.json"):  # the other writer lands meanwhile
                self.data[key.rsplit("/", 1)[0] + "/0000000000000000.json"] = data

    objects = Racing()
    with pytest.raises(AlreadyExists, match="at the same time"):
        Catalog(objects, tmp_path / "db").commit(_manifest("j", cid="c1"))
    assert [k for k in objects.data if k.startswith("manifests/")] == ["manifests/j/c1/0000000000000000.json"]
