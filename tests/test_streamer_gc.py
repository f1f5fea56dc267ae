"""GC of unreferenced chunks, and its safety while writers run (leases, touch on dedup hit)."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from cedanafs.streamer import ChunkerSpec, Store, chunk_key, open_backend
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
    for key in list(store.backend.list("chunks/")):
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


def test_dedup_hit_on_old_chunk_touches_it(store):
    data = os.urandom(200_000)
    old = store.write_bytes(data)
    _age_all_chunks(store, 7200)
    with store.open_lease() as lease:
        writer = store.writer(lease)
        writer.write(data)
        again = writer.close()
        assert again == old
        assert writer.stats.new_chunks == 0
        assert writer.stats.extra["touched_chunks"] == len(old.chunks)
        for ref in old.chunks:
            assert store.chunks.stat(ref.digest).mtime >= lease.start
        # A GC now (nothing committed yet, so nothing referenced) must keep them.
        assert store.collect_garbage(set(), grace_seconds=0).deleted == 0
    assert store.read_bytes(again) == data


def test_expired_lease_is_ignored_and_removed(store):
    lease = store.open_lease(ttl=600)
    lease._stop.set()  # the writer "crashed": no more refreshes
    store.write_bytes(os.urandom(100_000), lease=lease)
    _age(store, lease.key, 7200)
    _age_all_chunks(store, 7200)
    result = store.collect_garbage(set(), grace_seconds=60)
    assert result.expired_leases_removed == 1
    assert result.deleted == 2
    assert list(store.backend.list(LEASES)) == []


def test_gc_concurrent_with_writer_never_loses_committed_data(store):
    """A writer keeps writing files (half their chunks reused from old, unreferenced data) and
    'commits' each by adding it to the manifest set; GC runs in a loop with no grace. Every
    committed file must stay readable."""
    old_blocks = [os.urandom(64 << 10) for _ in range(24)]
    for block in old_blocks:
        store.write_bytes(block)
    _age_all_chunks(store, 7200)  # old and unreferenced: GC candidates
    committed: list = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def referenced():
        with lock:
            return {c.digest for content in committed for c in content.chunks}

    def writer():
        try:
            with store.open_lease() as lease:
                for i in range(30):
                    w = store.writer(lease)
                    w.write(old_blocks[i % 24] + os.urandom(64 << 10) + old_blocks[(i * 7) % 24])
                    content = w.close()
                    time.sleep(0.02)  # the manifest is written a moment after the data
                    with lock:
                        committed.append(content)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            stop.set()

    def collector():
        try:
            while not stop.is_set():
                store.collect_garbage(referenced, grace_seconds=0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(committed) == 30
    store.collect_garbage(referenced, grace_seconds=0)
    for content in committed:
        assert len(store.read_bytes(content)) == content.size
    live = set(store.chunks.list_digests())
    assert live == referenced()  # and the garbage did go


def test_touch_recreates_a_chunk_gc_deleted_meanwhile(store):
    """GC deleting a chunk between a writer's stat and its touch: the touch puts it back."""
    data = os.urandom(64 << 10)
    ref = store.write_bytes(data).chunks[0]
    _age_all_chunks(store, 7200)
    real_stat = store.backend.stat

    def stat_then_gc(key):
        info = real_stat(key)
        if key == chunk_key(ref.digest):
            store.backend.delete(key)  # GC wins the race right after the writer looked
        return info

    with store.open_lease() as lease:
        store.backend.stat = stat_then_gc
        try:
            result = store.chunks.store(data, lease)
        finally:
            store.backend.stat = real_stat
        assert result.touched
        assert store.chunks.get(ref) == data
        assert real_stat(chunk_key(ref.digest)).mtime >= lease.start
