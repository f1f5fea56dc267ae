"""An archive that frees its source as it goes (`consume`, for a spool), and the O_DIRECT
writer archives go through (fsio.DirectWriter)."""

from __future__ import annotations

import io
import os
import random
import threading

import pytest

from cedanafs import fsio
from cedanafs.app import archive

pytestmark = pytest.mark.unit

MiB = 1 << 20


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    return images


def _blocks(path) -> int:
    return os.stat(path).st_blocks


def test_consume_frees_the_source_as_it_goes_and_the_archive_holds_every_byte(tmp_path):
    images = _images(tmp_path)
    pages = _data(40 * MiB, 9)
    (images / "pages-1.img").write_bytes(pages)
    (images / "inventory.img").write_bytes(b"inventory")
    probe = os.open(images / "probe", os.O_RDWR | os.O_CREAT)
    try:
        if not fsio.punch_hole(probe, 0, 4096):
            pytest.skip("this filesystem cannot punch holes")
    finally:
        os.close(probe)
        os.unlink(images / "probe")
    before = _blocks(images / "pages-1.img")
    buf = io.BytesIO()
    archive.write_archive(str(images), buf, "gzip", consume=True)
    assert _blocks(images / "pages-1.img") < before // 2  # windows no view held any more are freed
    dest = tmp_path / "out"
    dest.mkdir()
    archive.extract_archive(io.BytesIO(buf.getvalue()), str(dest), "x")
    assert (dest / "pages-1.img").read_bytes() == pages


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_direct_writer_writes_every_byte_in_order(tmp_path, where):
    base = tmp_path if where == "tmp" else "/dev/shm"
    path = os.path.join(base, f"direct-{os.getpid()}")
    data = _data(3 * MiB + 4097, 11)
    rng = random.Random(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with fsio.DirectWriter(fd, buffer=MiB) as out:
            off = 0
            while off < len(data):
                n = rng.choice([1, 511, 4096, 70_000, 2 * MiB])
                piece = memoryview(data)[off:off + n]
                assert out.write(piece) == len(piece)
                off += n
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with open(path, "rb") as f:
            assert f.read() == data
    finally:
        os.unlink(path)


def test_direct_writer_raises_what_the_disk_said_and_stops(tmp_path):
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        out = fsio.DirectWriter(fd, buffer=64 * 1024)
        with pytest.raises(OSError):
            for _ in range(10):
                out.write(bytes(64 * 1024))
            out.close()
        out.abort()
    finally:
        os.close(fd)
    assert not [t for t in threading.enumerate() if t.name == "archive-writer"]
