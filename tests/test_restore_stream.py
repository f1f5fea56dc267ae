"""Unit tier of streamed restores: the image-streamer protocol as CRIU speaks it (criu/stream.py),
a stored file written into a pipe from buffers used again (files.write_to, codecs.decode_into,
ChunkStore.get_into), and CRIU's pstree and pagemap images read without pycriu."""

from __future__ import annotations

import array
import os
import random
import socket
import struct
import threading
from pathlib import Path

import pytest

from cedanafs.criu import images, stream
from cedanafs.streamer import ChunkerSpec, CorruptChunk, Store, codecs
from cedanafs.streamer.backends.local import LocalBackend
from cedanafs.streamer.files import write_to

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class FakeCriu:
    """CRIU's side of the protocol (criu/img-streamer.c): ask for a name, hear whether it exists,
    send the write end of a pipe, read the file from the read end."""

    def __init__(self, images_dir: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(images_dir / stream.SERVE_SOCKET))

    def open(self, name: str) -> bytes | None:
        body = b"\x0a" + _varint(len(name)) + name.encode()
        self.sock.sendall(struct.pack("<I", len(body)) + body)
        size = struct.unpack("<I", self.sock.recv(4))[0]
        reply = self.sock.recv(size)
        if reply != b"\x08\x01":
            assert reply == b"\x08\x00"
            return None
        r, w = os.pipe()
        self.sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
        os.close(w)
        data = bytearray()
        while block := os.read(r, 1 << 20):
            data += block
        os.close(r)
        return bytes(data)

    def close(self) -> None:
        self.sock.close()


def test_serves_each_image_asked_for_and_says_which_do_not_exist(tmp_path):
    files = {"inventory.img": b"inv" * 10, "pages-1.img": os.urandom(3 << 20)}

    def source(name):
        if name not in files:
            return None
        return lambda fd: os.write(fd, files[name]) if len(files[name]) < 65536 else _write_all(fd, files[name])

    done = threading.Event()
    stream.serve(str(tmp_path), source, on_done=done.set)
    criu = FakeCriu(tmp_path)
    assert criu.open("inventory.img") == files["inventory.img"]
    assert not (tmp_path / stream.SERVE_SOCKET).exists(), "the socket goes once CRIU is connected"
    assert criu.open("memfd.img") is None
    assert criu.open("pages-1.img") == files["pages-1.img"]
    criu.close()
    assert done.wait(10), "serving ends when CRIU hangs up"


def test_a_feeder_that_fails_leaves_the_file_short(tmp_path):
    def source(name):
        def feed(fd):
            os.write(fd, b"x" * 100)
            raise CorruptChunk("ab" * 32, "test")
        return feed

    done = threading.Event()
    stream.serve(str(tmp_path), source, on_done=done.set)
    criu = FakeCriu(tmp_path)
    assert criu.open("pages-1.img") == b"x" * 100  # CRIU sees the end too soon and fails the restore
    criu.close()
    assert done.wait(10)


def test_names_that_are_not_image_names_end_the_session(tmp_path):
    asked = []
    done = threading.Event()
    stream.serve(str(tmp_path), lambda name: asked.append(name), on_done=done.set)
    criu = FakeCriu(tmp_path)
    body = b"\x0a" + _varint(5) + b"../x/"
    criu.sock.sendall(struct.pack("<I", len(body)) + body)
    assert done.wait(10) and asked == []
    criu.close()


def test_socket_path_too_long_is_refused(tmp_path):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(stream.StreamError):
        stream.serve(str(deep), lambda name: None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@pytest.fixture
def local_store(tmp_path):
    store = Store(LocalBackend(str(tmp_path / "store")), codec="lz4", chunker=ChunkerSpec.for_size("cdc", 64 << 10))
    yield store
    store.close()


def _mixed(n: int) -> bytes:
    rnd = random.Random(7)
    text = b"".join(rnd.choice([b"page ", b"memory ", b"restore "]) for _ in range(n // 12))
    return (bytes(n // 3) + text[: n // 3] + rnd.randbytes(n - 2 * (n // 3)))


def _read_through_pipe(store, content) -> bytes:
    r, w = os.pipe()
    out = bytearray()

    def drain():
        while block := os.read(r, 1 << 20):
            out.extend(block)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        assert write_to(store, content, w) == content.size
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    return bytes(out)


def test_write_to_gives_back_the_file_with_plain_and_lz4_chunks(local_store):
    data = _mixed(2 << 20)
    content = local_store.write_bytes(data)
    stored = {codecs.codec_of(local_store.backend.get(local_store.chunks.key(c.digest))) for c in content.chunks}
    assert stored == {"none", "lz4"}, "the test wants both kinds of chunks"
    assert _read_through_pipe(local_store, content) == data


@pytest.mark.expect_warnings
def test_write_to_refuses_a_corrupt_chunk(local_store):
    data = _mixed(1 << 20)
    content = local_store.write_bytes(data)
    bad = content.chunks[len(content.chunks) // 2]
    key = local_store.chunks.key(bad.digest)
    blob = local_store.backend.get(key)
    local_store.backend.put(key, blob[:1] + bytes(len(blob) - 1))
    with pytest.raises(CorruptChunk):
        _read_through_pipe(local_store, content)


def test_decode_into_matches_decode():
    data = _mixed(300 << 10)
    out = bytearray(len(data))
    for codec in ("lz4", "zstd", "none"):
        blob = codecs.encode(data, codec)
        assert bytes(codecs.decode_into(blob, out)) == data
        assert bytes(codecs.decode_into(memoryview(bytearray(blob)), out)) == data
    with pytest.raises(codecs.DecodeError):
        lz4 = codecs.encode(bytes(100000), "lz4")
        codecs.decode_into(lz4[:5] + bytes(len(lz4) - 5), out)


def _image(magic: bytes, messages: list[bytes]) -> bytes:
    return magic + b"".join(struct.pack("<I", len(m)) + m for m in messages)


def _msg(*fields: tuple[int, int]) -> bytes:
    return b"".join(_varint(number << 3) + _varint(value) for number, value in fields)


def test_pstree_and_pagemap_read_by_hand(tmp_path):
    magic = struct.pack("<II", 0x54564319, 0x12345678)
    packed_threads = _varint((5 << 3) | 2) + _varint(len(_varint(7) + _varint(70000))) + _varint(7) + _varint(70000)
    (tmp_path / "pstree.img").write_bytes(_image(magic, [
        _msg((1, 7), (2, 0), (3, 7), (4, 7)) + packed_threads,
        _msg((1, 8), (2, 7), (3, 7), (4, 7), (5, 8)),
    ]))
    assert images.read_pstree(str(tmp_path)) == [images.TreeEntry(7, 0, 7, 7, (7, 70000)),
                                                 images.TreeEntry(8, 7, 7, 7, (8,))]
    assert images.image_pids(str(tmp_path)) == [7, 70000, 8]
    (tmp_path / "pagemap-7.img").write_bytes(_image(magic, [
        _msg((1, 3)),
        _msg((1, 0x1000), (2, 2), (4, images.PE_PRESENT), (5, 2)),
        _msg((1, 0x9000), (2, 3), (4, images.PE_PRESENT | images.PE_LAZY), (5, 3)),
        _msg((1, 0xf000), (2, 1), (3, 1), (4, images.PE_PARENT), (5, 1)),
    ]))
    name, ranges = images.read_pagemap(str(tmp_path), 7)
    assert name == "pages-3.img"
    assert ranges == [images.PageRange(0, 2 * 4096, False), images.PageRange(2 * 4096, 3 * 4096, True)]
    (tmp_path / "pstree.img").write_bytes(magic + struct.pack("<I", 50) + b"\x08")
    with pytest.raises(images.CheckpointError, match="damaged"):
        images.read_pstree(str(tmp_path))


def test_write_to_over_a_backend_that_cannot_read_into_a_buffer():
    import uuid

    from cedanafs.streamer import open_backend
    from cedanafs.streamer.backends.memory import forget

    name = f"unit-{uuid.uuid4().hex[:10]}"
    store = Store(open_backend(f"memory://{name}"), codec="lz4", chunker=ChunkerSpec.for_size("cdc", 64 << 10))
    try:
        data = _mixed(1 << 20)
        content = store.write_bytes(data)
        assert _read_through_pipe(store, content) == data
    finally:
        store.close()
        forget(name)
