"""Unit tier of the streamer: codecs, chunkers, chunk store, cache, FileWriter/FileReader, budget."""

from __future__ import annotations

import io
import itertools
import os
import random
import threading
import time
import uuid

import pytest

from cedanafs.streamer import (ChunkCache, ChunkerSpec, ChunkStore, CorruptChunk, FileReader,
                               FileWriter, MissingChunk, Store, chunk_key, digest_of, open_backend,
                               read_to, write_stream)
from cedanafs.streamer import codecs
from cedanafs.streamer.backends.memory import MemoryBackend, forget
from cedanafs.streamer.chunker import PAGE, chunk_bytes
from cedanafs.types import ChunkRef, FileContent

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


def text_like(n: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = [b"checkpoint", b"restore", b"page", b"memory", b"process", b"tensor", b"epoch", b"loss"]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" " + str(rnd.randrange(10000)).encode() + b"\n"
    return bytes(out[:n])


@pytest.fixture
def mem_url():
    name = f"unit-{uuid.uuid4().hex[:10]}"
    yield f"memory://{name}"
    forget(name)


@pytest.fixture
def store(mem_url):
    s = Store(open_backend(mem_url), chunker=ChunkerSpec.for_size("cdc", 256 << 10), memory_limit=8 << 20)
    yield s
    s.close()


# -- codecs --------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["zstd", "lz4", "none"])
@pytest.mark.parametrize("data", [b"", b"x", text_like(300_000), bytes(1 << 20), os.urandom(100_000)])
def test_codec_roundtrip(codec, data):
    blob = codecs.encode(data, codec)
    assert codecs.decode(blob) == data


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_codec_compresses_when_it_pays(codec):
    data = text_like(1 << 20)
    blob = codecs.encode(data, codec)
    assert codecs.codec_of(blob) == codec
    assert len(blob) < len(data) / 2


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_codec_stores_plain_when_it_does_not_pay(codec):
    data = os.urandom(1 << 20)
    blob = codecs.encode(data, codec)
    assert codecs.codec_of(blob) == "none"
    assert blob[1:] == data


def test_codec_saving_below_threshold_is_stored_plain():
    # ~2% compressible: the saving is under MIN_SAVING, so plain.
    data = os.urandom(980_000) + bytes(20_000)
    assert codecs.codec_of(codecs.encode(data, "zstd")) == "none"


def test_codec_header_is_self_describing_and_rejects_garbage():
    blob = codecs.encode(text_like(50_000), "lz4")
    assert codecs.decode(blob) == text_like(50_000)  # no codec name needed to read
    with pytest.raises(codecs.DecodeError):
        codecs.decode(b"\x09abc")
    with pytest.raises(codecs.DecodeError):
        codecs.decode(b"")
    with pytest.raises(codecs.DecodeError):
        codecs.decode(blob[:1] + b"\xff" * (len(blob) - 1))


# -- chunkers ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fixed", "cdc"])
def test_chunker_deterministic_whatever_the_feed_sizes(kind):
    data = os.urandom(9 << 20)
    spec = ChunkerSpec.for_size(kind, 1 << 20)
    reference = chunk_bytes(data, spec)
    assert b"".join(reference) == data
    for step in (4096, 100_003, 128 << 10, 3 << 20):
        chunker = spec.make()
        out = []
        for i in range(0, len(data), step):
            out += chunker.feed(data[i:i + step])
        out += chunker.flush()
        assert out == reference


@pytest.mark.parametrize("spec", [ChunkerSpec.for_size("cdc", 1 << 20), ChunkerSpec(kind="cdc", avg=16384, min=4096,
                                                                                  max=65536),
                                  ChunkerSpec.for_size("fixed", 1 << 20), ChunkerSpec.for_size("fixed", 8192)],
                         ids=["cdc-1M", "cdc-16K", "fixed-1M", "fixed-8K"])
def test_windowed_cut_points_are_the_chunkers_cut_points(spec):
    """ChunkerSpec.cuts (one fingerprint pass per window, what the ingest uses) gives exactly the
    cut points of next_cut and of the streaming chunkers, whatever the window and the size."""
    rnd = random.Random(7)
    for size in (0, 1, PAGE - 1, PAGE, PAGE + 5, 3 << 20, (9 << 20) + 123, 700 * PAGE):
        data = bytearray(rnd.randbytes(size))
        data[: size // 3] = bytes(size // 3)  # a run without cut points: max-size chunks
        view = memoryview(bytes(data))
        ends, start = [], 0
        while start < size:
            start = spec.next_cut(view, start, size, final=True)
            ends.append(start)
        streamed = list(itertools.accumulate(len(c) for c in chunk_bytes(bytes(data), spec)))
        for window in (PAGE, 5 * PAGE, 1 << 20, 16 << 20):
            assert list(spec.cuts(view, window=window)) == ends == streamed, (size, window)


def test_chunk_sizes_are_page_multiples_within_bounds():
    data = os.urandom(16 << 20) + b"tail"
    spec = ChunkerSpec.for_size("cdc", 1 << 20)
    chunks = chunk_bytes(data, spec)
    for c in chunks[:-1]:
        assert len(c) % PAGE == 0
        assert spec.min <= len(c) <= spec.max
    assert len(chunks[-1]) % PAGE == 4
    fixed = chunk_bytes(data, ChunkerSpec.for_size("fixed", 1 << 20))
    assert [len(c) for c in fixed[:-1]] == [1 << 20] * 16


def _shared(a: list[bytes], b: list[bytes]) -> int:
    seen = {digest_of(c) for c in a}
    return sum(len(c) for c in b if digest_of(c) in seen)


def test_cdc_resynchronises_after_inserted_pages_where_fixed_does_not():
    # Seeded: with 1 MiB chunks in 24 MiB, how much one chunk's size varies moves the figure by
    # several percent from one random image to the next.
    rng = random.Random(1127)
    pages = rng.randbytes(24 << 20)
    # The next "checkpoint": three new pages appear early in the image, shifting the rest.
    changed = pages[:PAGE * 10] + rng.randbytes(3 * PAGE) + pages[PAGE * 10:]
    results = {}
    for kind in ("fixed", "cdc"):
        spec = ChunkerSpec.for_size(kind, 1 << 20)
        results[kind] = _shared(chunk_bytes(pages, spec), chunk_bytes(changed, spec)) / len(changed)
    assert results["cdc"] > 0.85
    assert results["fixed"] < 0.1


# -- chunk store -----------------------------------------------------------------------------
def test_chunkstore_put_get_and_dedup(mem_url):
    cs = ChunkStore(open_backend(mem_url))
    data = text_like(500_000)
    first = cs.store(data)
    assert first.new and first.stored_bytes < len(data)
    assert first.ref == ChunkRef(digest_of(data), len(data))
    again = cs.store(data)
    assert not again.new and again.stored_bytes == 0
    assert list(cs.list_digests()) == [first.ref.digest]
    assert cs.get(first.ref) == data
    assert cs.exists(first.ref.digest)
    cs.delete(first.ref.digest)
    with pytest.raises(MissingChunk, match=first.ref.digest):
        cs.get(first.ref)


@pytest.mark.expect_warnings
def test_chunkstore_corrupt_chunk_named_and_not_refetched(mem_url):
    backend = open_backend(mem_url)
    cs = ChunkStore(backend)
    data = text_like(200_000)
    ref = cs.put(data)
    blob = bytearray(backend.get(chunk_key(ref.digest)))
    blob[len(blob) // 2] ^= 0xFF
    backend.put(chunk_key(ref.digest), bytes(blob))
    with pytest.raises(CorruptChunk, match=ref.digest):
        cs.get(ref)
    calls = []
    original = backend.get
    backend.get = lambda key: calls.append(key) or original(key)
    with pytest.raises(CorruptChunk, match=ref.digest):
        cs.get(ref)
    assert calls == []  # remembered, not fetched again
    # A writer storing the right bytes repairs it.
    assert cs.store(data).new
    assert cs.get(ref) == data


@pytest.mark.expect_warnings
def test_chunkstore_detects_swapped_content(mem_url):
    backend = open_backend(mem_url)
    cs = ChunkStore(backend, codec="none")
    a, b = b"a" * 1000, b"b" * 1000
    ra, rb = cs.put(a), cs.put(b)
    backend.put(chunk_key(ra.digest), backend.get(chunk_key(rb.digest)))  # valid encoding, wrong bytes
    with pytest.raises(CorruptChunk, match=ra.digest):
        cs.get(ra)


# -- FileWriter / FileReader -----------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 3 << 20])
def test_file_roundtrip_sizes(store, size):
    data = os.urandom(size)
    writer = FileWriter(store)
    for i in range(0, size, 50_000):
        writer.write(data[i:i + 50_000])
    content = writer.close()
    assert content.size == size
    if size < 64 * 1024:
        assert content.inline == data and content.chunks == ()
    else:
        assert content.inline is None and sum(c.size for c in content.chunks) == size
    assert store.read_bytes(content) == data
    out = io.BytesIO()
    assert read_to(store, content, out) == size
    assert out.getvalue() == data


def test_multi_chunk_random_reads(store):
    data = text_like(2 << 20) + os.urandom(3 << 20)
    content = write_stream(store, io.BytesIO(data))
    assert len(content.chunks) > 5
    reader = FileReader(store, content)
    rnd = random.Random(7)
    for _ in range(200):
        off = rnd.randrange(len(data) + 10)
        n = rnd.randrange(1 << 20)
        assert reader.read(off, n) == data[off:off + n]
    assert reader.read(len(data), 10) == b""


def test_reader_fetches_only_touched_chunks(mem_url):
    backend = open_backend(mem_url)
    s = Store(backend, chunker=ChunkerSpec.for_size("fixed", 64 << 10), readahead=0)
    data = os.urandom(40 * (64 << 10))
    content = s.write_bytes(data)
    fetched = []
    original = backend.get
    backend.get = lambda key: fetched.append(key) or original(key)
    reader = s.reader(content)
    assert reader.read(10 * (64 << 10) + 5, 100) == data[10 * (64 << 10) + 5:][:100]
    assert fetched == [chunk_key(content.chunks[10].digest)]
    s.close()


def test_sequential_reads_prefetch_ahead(mem_url):
    s = Store(open_backend(mem_url), chunker=ChunkerSpec.for_size("fixed", 64 << 10), readahead=3)
    data = os.urandom(20 * (64 << 10))
    content = s.write_bytes(data)
    reader = s.reader(content)
    reader.read(0, 4096)
    reader.read(4096, 4096)
    deadline = time.monotonic() + 5
    wanted = [content.chunks[i].digest for i in (1, 2, 3)]
    while not all(s.cache.contains(d) for d in wanted) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(s.cache.contains(d) for d in wanted)
    s.close()


def test_writing_same_data_twice_stores_no_new_chunks(store):
    data = text_like(1 << 20) + os.urandom(2 << 20)
    w1 = store.writer()
    w1.write(data)
    c1 = w1.close()
    keys_before = set(store.backend.list())
    w2 = store.writer()
    w2.write(data)
    c2 = w2.close()
    assert c1 == c2
    assert set(store.backend.list()) == keys_before
    assert w2.stats.new_chunks == 0 and w2.stats.stored_bytes == 0
    assert w2.stats.reused_chunks == len(c2.chunks)


def test_writer_abort_and_errors(mem_url):
    class Failing(MemoryBackend):
        def put(self, key, data):
            if key.startswith("chunks-b3/"):
                raise OSError("disk on fire")
            super().put(key, data)

    s = Store(Failing(mem_url.split("//")[1]), chunker=ChunkerSpec.for_size("fixed", 64 << 10))
    w = s.writer()
    with pytest.raises(OSError, match="disk on fire"):
        for _ in range(100):
            w.write(os.urandom(64 << 10))
        w.close()
    w2 = s.writer()
    w2.write(os.urandom(30_000))  # under the inline threshold: no upload yet
    w2.abort()
    with pytest.raises(ValueError):
        w2.write(b"x")
    s.close()


class SlowBackend(MemoryBackend):
    """Counts the bytes inside put() at any moment, and sleeps to keep uploads in flight."""

    def __init__(self, name):
        super().__init__(name)
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def put(self, key, data):
        with self.lock:
            self.in_flight += len(data)
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(0.02)
            super().put(key, data)
        finally:
            with self.lock:
                self.in_flight -= len(data)


def test_memory_budget_is_held(mem_url):
    backend = SlowBackend(mem_url.split("//")[1])
    limit = 1 << 20
    s = Store(backend, codec="none", chunker=ChunkerSpec.for_size("fixed", 128 << 10),
              memory_limit=limit, streams=16)
    data = os.urandom(12 << 20)
    writers = [s.writer() for _ in range(3)]
    threads = [threading.Thread(target=lambda w=w: (w.write(data), w.close())) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.budget.peak <= limit
    assert backend.peak <= limit + 3 * len(writers)  # +1 header byte per chunk
    # ...and the budget was actually used for parallelism, not serialised to one chunk.
    assert backend.peak >= 3 * (128 << 10)
    assert s.budget.used == 0
    s.close()


def test_single_flight_fetch(mem_url):
    backend = open_backend(mem_url)
    cs = ChunkStore(backend)
    ref = cs.put(os.urandom(300_000))
    cache = ChunkCache(memory_limit=10 << 20)
    calls = []
    gate = threading.Event()

    def fetch():
        calls.append(1)
        gate.wait(5)
        return cs.get(ref)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_fetch(ref.digest, fetch)))
               for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 8 and len(set(results)) == 1
    assert cache.stats().misses == 1


@pytest.mark.expect_warnings
def test_disk_cache_bounded_and_verified(tmp_path):
    cache = ChunkCache(memory_limit=1, disk_dir=str(tmp_path / "c"), disk_limit=1 << 20)
    blobs = [os.urandom(300_000) for _ in range(6)]
    for b in blobs:
        assert cache.get_or_fetch(digest_of(b), lambda b=b: b) == b
    assert cache.disk.size <= 1 << 20
    last = blobs[-1]
    assert cache.get_or_fetch(digest_of(last), lambda: pytest.fail("should come from disk")) == last
    assert cache.stats().disk_hits == 1
    # A rotten disk entry is dropped and refetched, never returned.
    path = tmp_path / "c" / digest_of(last)[:2] / digest_of(last)
    path.write_bytes(b"rot" + last[3:])
    assert cache.get_or_fetch(digest_of(last), lambda: last) == last
    assert cache.stats().misses == 7
    # A new cache over the same dir finds the entries again.
    again = ChunkCache(memory_limit=1, disk_dir=str(tmp_path / "c"), disk_limit=1 << 20)
    assert again.get_or_fetch(digest_of(last), lambda: pytest.fail("not from disk")) == last


@pytest.mark.expect_warnings
def test_reader_never_returns_wrong_bytes(store):
    data = text_like(3 << 20, seed=3)
    content = store.write_bytes(data)
    victim = content.chunks[1]
    key = chunk_key(victim.digest)
    blob = bytearray(store.backend.get(key))
    blob[-10] ^= 0x55
    store.backend.put(key, bytes(blob))
    reader = FileReader(store, content, cache=ChunkCache(memory_limit=1))
    assert reader.read(0, 100) == data[:100]
    with pytest.raises(CorruptChunk, match=victim.digest):
        reader.read(content.chunks[0].size, 10)


def test_store_from_settings_uses_config(tmp_path):
    from cedanafs.config import load_settings

    settings = load_settings(override_json=(
        '{"store": {"url": "%s", "codec": "lz4", "chunk_size": 262144, "memory_limit": 4194304},'
        ' "cache": {"dir": "%s", "size": 1048576}, "checkpoint": {"streams": 3}}'
        % (tmp_path / "store", tmp_path / "cache")))
    with Store.from_settings(settings) as s:
        assert s.backend.url == f"file://{tmp_path / 'store'}"
        assert s.streams == 3 and s.budget.limit == 4 << 20
        content = s.write_bytes(text_like(1 << 20))
        assert s.read_bytes(content) == text_like(1 << 20)
        blob = s.backend.get(chunk_key(content.chunks[0].digest))
        assert codecs.codec_of(blob) == "lz4"
        assert s.cache.disk is not None and s.cache.disk.size > 0
        st = s.stats()
        assert st.chunk_count == len(set(content.chunks)) and st.stored_bytes < 1 << 20


def test_chunks_stored_plain_are_compressed_after_the_commit(tmp_path):
    """A deferring chunk store writes compressible chunks plain (no compression on the way to a
    commit) and compact() replaces them with compressed ones; incompressible ones are never queued."""
    cs = ChunkStore(open_backend(str(tmp_path / "store")), codec="lz4", defer_compression=True)
    text, noise = text_like(600_000), os.urandom(600_000)
    t, n = cs.store(text), cs.store(noise)
    cs.backend.sync()
    assert codecs.is_plain(cs.backend.get(chunk_key(t.ref.digest)))
    assert t.stored_bytes == len(text) + 1
    assert cs.deferred() == (1, len(text)) and cs.stored_plain.is_set()
    assert cs.get(t.ref) == text  # a plain chunk reads like any other
    assert cs.compact() == (1, pytest.approx(len(text) // 2, rel=0.9))
    blob = cs.backend.get(chunk_key(t.ref.digest))
    assert codecs.codec_of(blob) == "lz4" and len(blob) < len(text) // 2
    assert cs.get(t.ref) == text and cs.get(n.ref) == noise
    assert cs.deferred() == (0, 0) and not cs.stored_plain.is_set()
    assert cs.compact() == (0, 0)
    assert sorted(os.listdir(tmp_path / "store" / ".tmp")) == []


def test_a_local_store_removes_temporary_objects_of_dead_writers(tmp_path):
    """A put killed midway leaves a temporary file; the next open of the store removes it once it
    is an hour old (a fresh one may be another writer's put in flight)."""
    open_backend(str(tmp_path / "store")).close()
    tmp = tmp_path / "store" / ".tmp"
    stale, fresh = tmp / "put-dead-1-0", tmp / "put-live-2-0"
    stale.write_bytes(b"half a chunk")
    fresh.write_bytes(b"being written")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    backend = open_backend(str(tmp_path / "store"))
    assert not stale.exists() and fresh.exists()
    assert list(backend.list()) == []
    backend.close()


def test_compaction_skips_a_chunk_deleted_meanwhile(tmp_path):
    cs = ChunkStore(open_backend(str(tmp_path / "store")), codec="zstd", defer_compression=True)
    ref = cs.store(text_like(300_000)).ref
    cs.delete(ref.digest)  # a GC ran between the commit and the compaction
    assert cs.compact() == (0, 0)
    assert not cs.exists(ref.digest)


def test_mount_store_compresses_after_commit_in_the_background(tmp_path):
    """Store.from_settings(serving=True) on a local store defers (auto); the background thread
    compresses once nothing was stored for a while; a CLI's store (serving=False) never defers."""
    from cedanafs.config import load_settings

    settings = load_settings(override_json='{"store": {"url": "%s"}}' % (tmp_path / "store"))
    with Store.from_settings(settings) as cli_store:
        assert not cli_store.chunks.defer_compression
    with Store.from_settings(settings, serving=True) as s:
        assert s.chunks.defer_compression
        content = s.write_bytes(text_like(3 << 20))
        deadline = time.monotonic() + 30
        while s.compaction()["chunks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.compaction() == {"chunks": 0, "bytes": 0, "after_commit": True}
        for ref in content.chunks:
            assert codecs.codec_of(s.backend.get(chunk_key(ref.digest))) == "lz4"
        assert s.read_bytes(content) == text_like(3 << 20)
    off = load_settings(override_json='{"store": {"url": "%s", "compress_after_commit": "off"}}' % (tmp_path / "s2"))
    with Store.from_settings(off, serving=True) as s:
        assert not s.chunks.defer_compression
    from cedanafs.errors import ConfigError
    bad = load_settings(override_json='{"store": {"url": "%s", "compress_after_commit": "later"}}' % tmp_path)
    with pytest.raises(ConfigError, match="compress_after_commit"):
        Store.from_settings(bad)


def test_inline_content_roundtrip_through_reader(store):
    content = FileContent(size=5, inline=b"hello")
    assert store.reader(content).read(1, 3) == b"ell"


def test_one_reader_shared_by_threads(store):
    data = os.urandom(4 << 20)
    content = store.write_bytes(data)
    reader = store.reader(content)
    errors = []

    def worker(seed):
        rnd = random.Random(seed)
        try:
            pos = rnd.randrange(len(data))
            for _ in range(100):
                if rnd.random() < 0.3:
                    pos = rnd.randrange(len(data))
                n = rnd.randrange(1, 200_000)
                assert reader.read(pos, n) == data[pos:pos + n]
                pos = min(len(data), pos + n)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_client_errors_are_classified_by_type_not_by_name():
    """The one table maps client exceptions by their class, code and status, never by class name."""
    import aiohttp
    import botocore.exceptions
    from gcsfs.retry import HttpError

    from cedanafs.errors import ObjectExists
    from cedanafs.streamer.errors import AuthError, BackendError, NoSuchObject, TemporaryFailure, classify

    assert classify(aiohttp.ServerDisconnectedError()) is TemporaryFailure
    assert classify(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")) is TemporaryFailure
    assert classify(ConnectionResetError()) is TemporaryFailure
    assert classify(HttpError({"code": 503, "message": "later"})) is TemporaryFailure
    assert classify(HttpError({"code": 403, "message": "no"})) is AuthError
    assert classify(FileExistsError("x")) is ObjectExists
    assert classify(FileNotFoundError("x")) is NoSuchObject

    class EndpointConnectionError(Exception):
        """Only the name of a temporary failure."""

    assert classify(EndpointConnectionError()) is BackendError


# -- following a spool CRIU still writes ------------------------------------------------------
def test_following_hashes_while_the_writer_writes_and_stores_new_chunks_once_it_is_done(store, tmp_path):
    """While CRIU writes pages-1.img the ingest only cuts and hashes it (what the store has is
    reused at once); the chunks the store lacks are written once the dump is complete, read back
    from the spool, and the file reads back whole."""
    from cedanafs.spool import COMPLETE, WRITER
    from cedanafs.streamer import Progress, ingest_dir, ingest_file, read_to

    rng = random.Random(7)
    old = rng.randbytes(8 << 20)
    (tmp_path / "earlier").write_bytes(old)
    earlier, _ = ingest_file(store, str(tmp_path / "earlier"))  # a part of the image the store has already
    known = sorted(store.chunks.list_digests())
    new = rng.randbytes(32 << 20)  # more than the ingest's 16 MiB blocks: cut before the dump ends
    image = old + new
    src = tmp_path / "spool"
    src.mkdir()
    (src / WRITER).write_text(f"{os.getpid()}\n")
    (src / "inventory.img").write_bytes(b"inv")
    before_complete = {}
    progress = Progress()

    def write_like_criu():
        with open(src / "pages-1.img", "wb") as f:
            for at in range(0, len(image), 1 << 20):
                f.write(image[at:at + (1 << 20)])
                f.flush()
                time.sleep(0.002)
        # The follower cuts and hashes all but the last block meanwhile; the dump is not complete.
        deadline = time.monotonic() + 10
        while progress.read < 32 << 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # the blocks read are hashed by now
        before_complete["done"] = progress.done
        before_complete["objects"] = sorted(store.chunks.list_digests())
        (src / COMPLETE).write_text("")

    writer = threading.Thread(target=write_like_criu)
    writer.start()
    try:
        files = ingest_dir(store, str(src), progress=progress, follow=True)
    finally:
        writer.join()
    assert before_complete["done"] >= 7 << 20, "what the store had was found while the writer wrote"
    assert before_complete["objects"] == known, "nothing new is stored while the writer writes"
    contents = {name: content for name, _, content in files}
    assert sorted(contents) == ["inventory.img", "pages-1.img"]
    out = io.BytesIO()
    read_to(store, contents["pages-1.img"], out)
    assert out.getvalue() == image
    stored = set(store.chunks.list_digests())
    digests = [c.digest for c in contents["pages-1.img"].chunks]
    assert set(digests) <= stored
    assert len(set(digests) & set(known)) >= len(earlier.chunks) - 1, "the earlier file's chunks are reused"


def test_local_sync_fsyncs_what_was_put_and_its_directories_not_the_filesystem(tmp_path, monkeypatch):
    """A commit's sync makes its own chunks durable (each file and the directories naming them)
    without syncfs, which would also wait for every other writer's dirty data on the disk."""
    from cedanafs.streamer.backends import local

    synced, whole = [], []
    real = local._fsync_path
    monkeypatch.setattr(local, "_fsync_path", lambda path: (synced.append(path), real(path)))
    monkeypatch.setattr(local, "_syncfs", lambda root: whole.append(root))
    backend = local.LocalBackend(str(tmp_path / "store"))
    backend.put_parts_unsynced("chunks-b3/ab/abcd", (b"\0", b"data"))
    backend.put_parts_unsynced("chunks-b3/cd/cdef", (b"\0", b"more"))
    backend.put_parts_unsynced("chunks-b3/cd/gone", (b"\0", b"x"))
    backend.delete("chunks-b3/cd/gone")  # deleted before the sync: skipped, no error
    backend.sync()
    root = str(tmp_path / "store")
    assert {f"{root}/chunks-b3/ab/abcd", f"{root}/chunks-b3/cd/cdef", f"{root}/chunks-b3/ab",
            f"{root}/chunks-b3/cd", f"{root}/chunks-b3", root} <= set(synced)
    assert whole == []
    synced.clear()
    backend.sync()
    assert synced == [], "nothing new to make durable"
    assert backend.get("chunks-b3/ab/abcd") == b"\0data"
