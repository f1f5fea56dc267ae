"""One conformance suite over every backend: file, memory, S3 (moto) and GCS (fake-gcs-server)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cedanafs.errors import ObjectExists
from cedanafs.streamer import NoSuchObject, open_backend
from cedanafs.streamer.errors import CorruptObject
from cedanafs.streamer.backends.remote import WRITE_BLOCK

from .fixtures_servers import gcs_download, gcs_list_objects, s3_client

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(120)]


@pytest.fixture
def backend(any_backend_url):
    b = open_backend(any_backend_url)
    yield b
    b.close()


def test_put_get_overwrite(backend):
    backend.put("a/b/c", b"first")
    assert backend.get("a/b/c") == b"first"
    backend.put("a/b/c", b"second, longer")
    assert backend.get("a/b/c") == b"second, longer"
    backend.put("empty", b"")
    assert backend.get("empty") == b""


def test_create_is_conditional(backend):
    """A commit's create never replaces an object (S3 If-None-Match, GCS ifGenerationMatch=0, link)."""
    backend.create("m/j/c/0123.json", b"first")
    with pytest.raises(ObjectExists):
        backend.create("m/j/c/0123.json", b"second")
    assert backend.get("m/j/c/0123.json") == b"first"
    backend.delete("m/j/c/0123.json")
    backend.create("m/j/c/0123.json", b"again")
    assert backend.get("m/j/c/0123.json") == b"again"
    assert [k for k in backend.list("m/") if k != "m/j/c/0123.json"] == []  # no temp object left


def test_parts_and_many_are_whole_objects(backend):
    """A chunk written as header + body views, and a batch replacing objects: each object whole."""
    body = bytearray(b"x" * 5000)
    backend.put_parts_unsynced("p/one", (b"\x00", memoryview(body)[100:4100], b"", b"tail"))
    backend.sync()
    assert backend.get("p/one") == b"\x00" + b"x" * 4000 + b"tail"
    backend.put("p/two", b"old two")
    backend.put_many([("p/two", (b"\x02", b"new two")), ("p/three", (b"three",))])
    assert backend.get("p/two") == b"\x02new two"
    assert backend.get("p/three") == b"three"
    assert sorted(backend.list("p/")) == ["p/one", "p/three", "p/two"]  # no temporary object left


def test_get_range(backend):
    data = bytes(range(256)) * 40
    backend.put("r", data)
    assert backend.get_range("r", 0, 10) == data[:10]
    assert backend.get_range("r", 1000, 333) == data[1000:1333]
    assert backend.get_range("r", len(data) - 5, 100) == data[-5:]
    assert backend.get_range("r", len(data) + 10, 5) == b""
    assert backend.get_range("r", 3, 0) == b""


def test_segments_of_a_pack_read_on_their_own(backend):
    """put_segmented/get_segment (pack objects): each segment read back by one range request; a
    segment past the object's end is refused, never returned short."""
    segments = [backend.seal_segment(f"chunks-b3/00/{i}", bytes([i]) * (1000 + i)) for i in range(3)]
    backend.put_segmented("packs-b3/ab/pack1", segments)
    offset = 0
    for i, segment in enumerate(segments):
        assert backend.get_segment("packs-b3/ab/pack1", f"chunks-b3/00/{i}", offset, len(segment)) == bytes([i]) * (1000 + i)
        offset += len(segment)
    with pytest.raises(CorruptObject):
        backend.get_segment("packs-b3/ab/pack1", "chunks-b3/00/2", offset - 10, 20)
    with pytest.raises(NoSuchObject):
        backend.get_segment("packs-b3/ab/nothing", "chunks-b3/00/0", 0, 10)


def test_list_prefix_and_relative_keys(backend):
    keys = {"chunks/ab/ab01", "chunks/ab/ab02", "chunks/cd/cd01", "manifests/j/1.json", "top"}
    for key in keys:
        backend.put(key, key.encode())
    assert set(backend.list()) == keys
    assert set(backend.list("chunks-b3/")) == {k for k in keys if k.startswith("chunks-b3/")}
    assert set(backend.list("chunks/ab/ab0")) == {"chunks/ab/ab01", "chunks/ab/ab02"}
    assert set(backend.list("manifests/j/")) == {"manifests/j/1.json"}
    assert list(backend.list("nothing/")) == []


def test_delete_is_idempotent(backend):
    backend.put("d", b"x")
    backend.delete("d")
    assert not backend.exists("d")
    backend.delete("d")
    backend.delete("never-was")
    assert "d" not in set(backend.list())


def test_stat_and_exists(backend):
    before = time.time()
    backend.put("s", b"12345")
    info = backend.stat("s")
    assert info.size == 5
    # Same machine, so the store's clock is ours give or take S3's one-second resolution.
    assert before - 5 <= info.mtime <= time.time() + 5
    assert backend.exists("s")
    assert not backend.exists("t")


def test_missing_objects_raise_no_such_object(backend):
    with pytest.raises(NoSuchObject):
        backend.get("missing")
    with pytest.raises(NoSuchObject):
        backend.stat("missing")
    with pytest.raises(NoSuchObject):
        backend.get_range("missing", 0, 3)
    with pytest.raises(NoSuchObject):
        backend.open_read("missing").read()


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "dir/", "./x"])
def test_invalid_keys_rejected(backend, key):
    with pytest.raises(ValueError):
        backend.put(key, b"x")


def test_open_write_appears_whole_on_close(backend):
    # More than one S3 multipart part, so the upload really is in flight before close().
    data = os.urandom(WRITE_BLOCK + 1234567)
    writer = backend.open_write("streamed/obj")
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i:i + (1 << 20)])
        assert not backend.exists("streamed/obj")
    writer.close()
    assert backend.stat("streamed/obj").size == len(data)
    assert backend.get("streamed/obj") == data


def test_open_write_exception_leaves_nothing(backend):
    with pytest.raises(RuntimeError, match="boom"):
        with backend.open_write("aborted/obj") as w:
            w.write(os.urandom(WRITE_BLOCK + 10))
            raise RuntimeError("boom")
    assert not backend.exists("aborted/obj")
    assert list(backend.list("aborted/")) == []


def test_open_write_abort_keeps_old_object(backend):
    backend.put("keep", b"old")
    w = backend.open_write("keep")
    w.write(b"new bytes")
    w.abort()
    assert backend.get("keep") == b"old"
    with pytest.raises(ValueError):
        w.write(b"more")


def test_open_read_streams(backend):
    data = os.urandom(3 << 20)
    backend.put("big", data)
    with backend.open_read("big") as f:
        parts = []
        while block := f.read(700_000):
            parts.append(block)
    assert len(parts) >= 5
    assert b"".join(parts) == data


def test_concurrent_puts_and_readers_see_whole_objects(backend):
    old, new = b"A" * 300_000, b"B" * 200_000
    backend.put("hot", old)
    seen: set[bytes] = set()
    errors: list[BaseException] = []

    def reader():
        try:
            for _ in range(10):
                seen.add(backend.get("hot"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def writer(n):
        try:
            for i in range(5):
                backend.put(f"many/{n}/{i}", f"{n}-{i}".encode())
            backend.put("hot", new)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads += [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen <= {old, new}
    assert len(set(backend.list("many/"))) == 20
    assert backend.get("many/3/4") == b"3-4"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_s3_objects_visible_with_boto3(s3_url, moto_server, s3_bucket):
    backend = open_backend(s3_url)
    backend.put("chunks/aa/x", b"payload")
    client = s3_client(moto_server.endpoint)
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["store/chunks/aa/x"]
    body = client.get_object(Bucket=s3_bucket, Key="store/chunks/aa/x")["Body"].read()
    assert body == b"payload"
    client.put_object(Bucket=s3_bucket, Key="store/from-boto3", Body=b"hello")
    assert backend.get("from-boto3") == b"hello"


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_gcs_objects_visible_with_json_api(gcs_url, gcs_server, gcs_bucket):
    backend = open_backend(gcs_url)
    backend.put("chunks/aa/x", b"payload")
    assert gcs_list_objects(gcs_server.endpoint, gcs_bucket) == {"store/chunks/aa/x": 7}
    assert gcs_download(gcs_server.endpoint, gcs_bucket, "store/chunks/aa/x") == b"payload"
