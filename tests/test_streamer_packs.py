"""Pack objects (streamer/packs.py): a bucket store's chunks several to an object, read back one
by one, deduplicated, made durable by the commit, collected whole, sealed one by one."""

from __future__ import annotations

import os
import random
import uuid

import pytest

from cedanafs.errors import StoreError
from cedanafs.streamer import ChunkerSpec, Store, open_backend
from cedanafs.streamer.backends.crypt import EncryptedBackend, StoreKey
from cedanafs.streamer.backends.memory import _STORES, forget
from cedanafs.streamer.errors import CorruptChunk

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

CHUNK = 64 << 10
PACK = 4 * CHUNK


@pytest.fixture
def url(request):
    name = f"packs-{uuid.uuid4().hex[:10]}"
    request.addfinalizer(lambda: forget(name))
    return f"memory://{name}"


def _store(url: str, encrypted: StoreKey | None = None, pack_size: int = PACK) -> Store:
    backend = open_backend(url)
    if encrypted is not None:
        backend = EncryptedBackend(backend, encrypted)
    return Store(backend, codec="none", chunker=ChunkerSpec.for_size("fixed", CHUNK), inline_threshold=0,
                 pack_size=pack_size)


def _keys(url: str) -> list[str]:
    return sorted(_STORES[url.split("://", 1)[1]])


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _committed(store: Store, data: bytes):
    """`data` written and made ready for a commit by one writer (a lease), as a checkpoint is."""
    lease = store.open_lease()
    content = store.write_bytes(data, lease=lease)
    store.chunks.prepare_commit(lease)
    lease.release()
    return content


def test_chunks_go_to_a_few_packs_and_read_back_from_another_store(url):
    data = _data(20 * CHUNK)
    writer = _store(url)
    content = _committed(writer, data)
    keys = _keys(url)
    assert not [k for k in keys if k.startswith("chunks-")]  # no object per chunk
    packs = [k for k in keys if k.startswith("packs-b3/") and not k.endswith((".idx", ".sdx"))]
    assert len(packs) == 5 and len([k for k in keys if k.endswith(".idx")]) == 5
    assert len([k for k in keys if k.endswith(".sdx")]) == 1  # the writer's summary of the five
    reader = _store(url)  # another process: knows nothing but what the store holds
    gets = []
    real_get = reader.backend.get
    reader.backend.get = lambda key: (gets.append(key), real_get(key))[1]
    assert reader.read_bytes(content) == data
    assert [k for k in gets if k.startswith("packs-")] == [k for k in keys if k.endswith(".sdx")]  # not 5 indexes
    assert reader.stats().chunk_count == 20
    writer.close()
    reader.close()


def test_a_chunk_in_a_pack_is_not_stored_again(url):
    data = _data(8 * CHUNK)
    first = _store(url)
    content = _committed(first, data)
    before = _keys(url)
    second = _store(url)
    with second.open_lease() as lease2:
        again = second.write_bytes(data + _data(CHUNK, seed=2), lease=lease2)
        second.chunks.prepare_commit(lease2)
        assert lease2.reused == {c.digest for c in content.chunks}
    added = [k for k in _keys(url) if k not in before and k.startswith("packs-")]
    assert len(added) == 2  # one pack (and its index) for the one new chunk
    assert second.read_bytes(again)[:len(data)] == data
    first.close()
    second.close()


def test_chunks_not_yet_put_are_readable_and_the_commit_puts_them(url):
    store = _store(url)
    lease = store.open_lease()
    content = store.write_bytes(_data(2 * CHUNK), lease=lease)  # half a pack: still in memory
    assert not [k for k in _keys(url) if k.startswith("packs-")]
    assert store.read_bytes(content) == _data(2 * CHUNK)
    store.chunks.prepare_commit(lease)
    lease.release()
    other = _store(url)
    assert other.read_bytes(content) == _data(2 * CHUNK)
    store.close()
    other.close()


def test_a_pack_that_cannot_be_put_fails_its_writer_only(url):
    store = _store(url)
    real = store.backend.put_segmented
    failing = {"on": True}

    def put_segmented(key, segments):
        if failing["on"]:
            raise StoreError("the bucket said no")
        return real(key, segments)
    store.backend.put_segmented = put_segmented
    doomed, fine = store.open_lease(), store.open_lease()
    store.write_bytes(_data(CHUNK, seed=5), lease=doomed)
    with pytest.raises(StoreError, match="the bucket said no"):
        store.chunks.prepare_commit(doomed)  # its manifest is never written
    failing["on"] = False
    content = store.write_bytes(_data(CHUNK, seed=6), lease=fine)
    store.chunks.prepare_commit(fine)
    assert _store(url).read_bytes(content) == _data(CHUNK, seed=6)
    doomed.release()
    fine.release()
    store.close()


def _age_packs(url: str, seconds: float) -> None:
    objects = _STORES[url.split("://", 1)[1]]
    for key in list(objects):
        if key.startswith("packs-"):
            data, mtime = objects[key]
            objects[key] = (data, mtime - seconds)


def test_gc_deletes_a_pack_only_when_none_of_its_chunks_is_wanted(url):
    store = _store(url)
    lease = store.open_lease()
    kept = store.write_bytes(_data(3 * CHUNK, seed=7), lease=lease)
    partly = store.write_bytes(_data(4 * CHUNK, seed=8), lease=lease)  # fills the first pack
    dropped = store.write_bytes(_data(4 * CHUNK, seed=9), lease=lease)  # a pack of its own
    store.chunks.prepare_commit(lease)
    lease.release()
    _age_packs(url, 7200)
    refs = {c.digest for c in kept.chunks}
    [with_kept] = [set(d) for d in store.chunks.pack_members().values() if refs & set(d)]
    result = store.collect_garbage(lambda: refs, grace_seconds=3600)
    # 11 chunks in packs of 4: kept's 3 share theirs with one other; the two packs left go whole.
    assert len(with_kept) == 4 and result.deleted == 7
    assert len([k for k in _keys(url) if k.endswith(".idx")]) == 1
    assert len([k for k in _keys(url) if k.endswith(".sdx")]) == 1  # still names the pack left
    reader = _store(url)
    assert reader.read_bytes(kept) == _data(3 * CHUNK, seed=7)
    for ref in partly.chunks + dropped.chunks:
        if ref.digest in with_kept:
            assert reader.chunks.get(ref)  # in kept's pack: still there
        else:
            with pytest.raises(StoreError):
                reader.chunks.get(ref)
    assert store.collect_garbage(set(), grace_seconds=3600).deleted == 4  # nothing referenced any more
    assert not [k for k in _keys(url) if k.startswith("packs-")]  # the summary went with its last pack
    store.close()
    reader.close()


def test_gc_keeps_a_young_pack_and_one_a_live_writer_reuses(url):
    store = _store(url)
    data = _data(4 * CHUNK, seed=10)
    _committed(store, data)
    assert store.collect_garbage(set(), grace_seconds=3600).deleted == 0  # young
    _age_packs(url, 7200)
    with store.open_lease() as writer:
        again = store.write_bytes(data, lease=writer)
        store.chunks.prepare_commit(writer)  # publishes the reuse
        result = store.collect_garbage(set(), grace_seconds=0)
        assert result.deleted == 0 and result.kept_reused == 4
    assert store.read_bytes(again) == data
    store.close()


@pytest.mark.expect_warnings("is corrupt")
def test_encrypted_packs_seal_each_chunk_and_refuse_a_changed_one(url):
    key = StoreKey.generate()
    store = _store(url, encrypted=key)
    data = _data(4 * CHUNK, seed=11)
    content = _committed(store, data)
    objects = _STORES[url.split("://", 1)[1]]
    [pack] = [k for k in objects if k.startswith("packs-kb3/") and not k.endswith(".idx")]
    blob, mtime = objects[pack]
    assert data[:4096] not in blob  # sealed
    victim, other = content.chunks[2], content.chunks[0]
    where = store.chunks.location(victim.digest)  # chunks land in a pack in the order they are stored
    broken = bytearray(blob)
    broken[where.offset + where.length // 2] ^= 1  # a byte inside one of its chunks
    objects[pack] = (bytes(broken), mtime)
    reader = _store(url, encrypted=key)
    with pytest.raises(CorruptChunk):
        reader.read_bytes(content)
    with pytest.raises(CorruptChunk):
        reader.chunks.get(victim)
    assert reader.chunks.get(other) == data[:CHUNK]  # the pack's other chunks still read
    store.close()
    reader.close()
