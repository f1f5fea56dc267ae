"""GC of unreferenced chunks, and its safety while writers run (leases, reused chunks published)."""

from __future__ import annotations

import os
import uuid

import pytest

from cedanafs.errors import StoreError
from cedanafs.streamer import ChunkerSpec, Store, open_backend
from cedanafs.streamer.backends.memory import _STORES, forget
from cedanafs.streamer.gc import LEASES

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        name = f"gc-{uuid.uuid4().hex[:10]}"
        request.addfinalizer(lambda: forget(name))
        url = f"memory://{name}"
    else:
        url = str(tmp_path / "store")
    s = Store(open_backend(url), chunker=ChunkerSpec.for_size("fixed", 64 << 10), inline_threshold=0)
    yield s
    s.close()


def _age(store: Store, key: str, seconds: float) -> None:
    """Make an object look `seconds` older (memory dict or file mtime)."""
    backend = store.backend
    if hasattr(backend, "root"):
        path = os.path.join(backend.root, *key.split("/"))
        st = os.stat(path)
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))
    else:
        data, mtime = _STORES[backend.name][key]
        _STORES[backend.name][key] = (data, mtime - seconds)


def _age_all_chunks(store: Store, seconds: float) -> None:
    for key in list(store.backend.list("chunks-b3/")):
        _age(store, key, seconds)


def test_gc_deletes_only_old_unreferenced_chunks(store):
    kept = store.write_bytes(os.urandom(200_000))
    dropped = store.write_bytes(os.urandom(200_000))
    _age_all_chunks(store, 7200)
    fresh = store.write_bytes(os.urandom(100_000))  # unreferenced but younger than the grace
    refs = {c.digest for c in kept.chunks}
    result = store.collect_garbage(lambda: refs, grace_seconds=3600)
    assert result.deleted == len(dropped.chunks)
    assert result.kept_recent == len(fresh.chunks)
    assert store.read_bytes(kept) is not None
    assert all(store.chunks.exists(c.digest) for c in fresh.chunks)
    assert not any(store.chunks.exists(c.digest) for c in dropped.chunks)
    assert result.deleted_bytes > 0


def test_gc_dry_run_deletes_nothing(store):
    store.write_bytes(os.urandom(100_000))
    _age_all_chunks(store, 7200)
    before = set(store.backend.list())
    result = store.collect_garbage(set(), grace_seconds=60, dry_run=True)
    assert result.deleted == 2
    assert set(store.backend.list()) == before


def test_live_lease_protects_unreferenced_chunks_until_released(store):
    lease = store.open_lease()
    content = store.write_bytes(os.urandom(300_000), lease=lease)
    result = store.collect_garbage(set(), grace_seconds=0)
    assert result.deleted == 0 and result.live_leases == [lease.id]
    assert all(store.chunks.exists(c.digest) for c in content.chunks)
    lease.release()
    assert list(store.backend.list(LEASES)) == []
    result = store.collect_garbage(set(), grace_seconds=0)
    assert result.deleted == len(content.chunks)


def _count_chunk_calls(store: Store) -> dict[str, int]:
    """Count the requests on chunk keys from now on (put, put_unsynced, stat, get, exists)."""
    calls = {"put": 0, "stat": 0, "get": 0}
    backend = store.backend
    for name, kind in (("put", "put"), ("put_unsynced", "put"), ("stat", "stat"), ("get", "get"),
                       ("exists", "stat")):
        real = getattr(backend, name)

        def counted(key, *args, _real=real, _kind=kind):
            if key.startswith("chunks-"):
                calls[_kind] += 1
            return _real(key, *args)
        setattr(backend, name, counted)
    return calls


def test_dedup_hit_costs_no_request_and_is_noted_in_the_lease(store):
    data = os.urandom(200_000)
    old = store.write_bytes(data)
    calls = _count_chunk_calls(store)
    with store.open_lease() as lease:
        writer = store.writer(lease)
        writer.write(data)
        again = writer.close()
        assert again == old
        assert writer.stats.new_chunks == 0 and writer.stats.stored_bytes == 0
        assert calls == {"put": 0, "stat": 0, "get": 0}  # no upload, not even a HEAD per chunk
        assert lease.reused == {c.digest for c in old.chunks}


def test_published_reuse_is_spared_by_gc(store):
    """An old, unreferenced chunk a writer reuses: once prepare_commit published it, GC keeps it."""
    data = os.urandom(200_000)
    old = store.write_bytes(data)
    _age_all_chunks(store, 7200)
    with store.open_lease() as lease:
        writer = store.writer(lease)
        writer.write(data)
        again = writer.close()
        store.chunks.prepare_commit(lease)
        result = store.collect_garbage(set(), grace_seconds=0)  # nothing committed: nothing referenced
        assert result.deleted == 0 and result.kept_reused == len(old.chunks)
    assert store.read_bytes(again) == data


def test_a_writer_committing_while_gc_lists_keeps_its_reused_chunks(store):
    """The writer published its reuse, then commits and releases its lease between the GC's
    listing of the manifests and its second reading of the leases: neither read shows the reuse,
    so GC must list the manifests again rather than delete the chunks the new manifest needs."""
    data = os.urandom(200_000)
    store.write_bytes(data)
    _age_all_chunks(store, 7200)
    lease = store.open_lease()
    writer = store.writer(lease)
    writer.write(data)
    again = writer.close()
    store.chunks.prepare_commit(lease)
    committed: set[str] = set()

    def manifests() -> set[str]:
        listed = set(committed)  # what the store's manifests referenced when listed
        if not committed:  # the commit and the release land just after this listing
            committed.update(c.digest for c in again.chunks)
            lease.release()
        return listed

    result = store.collect_garbage(manifests, grace_seconds=0)
    assert result.deleted == 0, "GC deleted chunks a manifest committed during the run references"
    assert store.read_bytes(again) == data


def test_reuse_of_a_chunk_gc_deleted_meanwhile_is_refused(store):
    """GC deletes a reused chunk before the writer published its lease: the commit is refused."""
    data = os.urandom(200_000)
    store.write_bytes(data)
    _age_all_chunks(store, 7200)
    with store.open_lease() as lease:
        writer = store.writer(lease)
        writer.write(data)
        writer.close()
        assert store.collect_garbage(set(), grace_seconds=0).deleted > 0  # the race: GC won
        with pytest.raises(StoreError, match="deleted by a concurrent GC"):
            store.chunks.prepare_commit(lease)


def test_a_gc_on_another_machine_makes_the_index_relist(store):
    """A second Store over the same backend (another machine) deletes a chunk our index knows."""
    data = os.urandom(64 << 10)
    ref = store.write_bytes(data).chunks[0]
    other = Store(store.backend, chunker=store.chunker, inline_threshold=0)
    _age_all_chunks(store, 7200)
    with store.open_lease() as lease:
        assert other.collect_garbage(set(), grace_seconds=0).deleted == 1  # during our session
        again = store.chunks.store(data, lease)  # our index still says we have it: a reuse
        assert not again.new
        with pytest.raises(StoreError, match="deleted by a concurrent GC"):
            store.chunks.prepare_commit(lease)
    assert store.chunks.store(data).new  # after the re-listing it is uploaded again
    assert store.chunks.get(ref) == data


def test_a_new_session_relists_after_a_gc_elsewhere(store):
    data = os.urandom(64 << 10)
    store.write_bytes(data)
    other = Store(store.backend, chunker=store.chunker, inline_threshold=0)
    _age_all_chunks(store, 7200)
    assert other.collect_garbage(set(), grace_seconds=0).deleted == 1  # between our sessions
    with store.open_lease() as lease:  # opening a session notices the GC and lists again
        assert store.chunks.store(data, lease).new
        store.chunks.prepare_commit(lease)
