"""gzip and zlib archives written on all cores (app/deflate.py): what any gzip/zlib reader reads,
with stored blocks for what does not compress, over images large enough to span several blocks
and mapping windows."""

import functools
import gzip
import hashlib
import io
import os
import random
import shutil
import subprocess
import threading
import zlib

import pytest

from cedanafs.app import archive, deflate
from cedanafs.errors import CheckpointError

pytestmark = pytest.mark.unit

MiB = 1 << 20


@functools.cache
def _text_base() -> bytes:
    rng = random.Random(1)
    words = b"checkpoint restore page memory image kernel socket thread signal buffer".split()
    out = bytearray()
    while len(out) < 256 * 1024:
        out += b" ".join(rng.choices(words, k=64)) + b".\n"
    return bytes(out[:256 * 1024])


def _text(n: int, seed: int = 1) -> bytes:
    """Text-like bytes: a rotated base block, repeated (deflate finds matches within 32 KiB only)."""
    base = _text_base()
    cut = seed % len(base)
    block = base[cut:] + base[:cut]
    return (block * (n // len(block) + 1))[:n]


@functools.cache
def _mixed(n: int) -> bytes:
    """Runs of random bytes, text and zeros, some shorter than a segment, some longer than a block."""
    parts, size, kind = [], 0, 0
    rng = random.Random(7)
    while size < n:
        length = min(rng.choice([4096, 100_000, 300_000, 1_500_000]), n - size)
        parts.append([rng.randbytes(length), _text(length, size), bytes(length)][kind % 3])
        size += length
        kind += 1
    return b"".join(parts)


def _written(data_writes: list[bytes], fmt: str, threads: int = 2) -> bytes:
    buf = io.BytesIO()
    writer = deflate.ParallelDeflateWriter(buf, fmt, archive.GZIP_LEVEL, threads)
    for data in data_writes:
        assert writer.write(data) == len(data)
    writer.close()
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["gzip", "zlib"])
@pytest.mark.parametrize("sizes", [[], [0], [1], [deflate.BLOCK], [deflate.BLOCK + 1], [10] * 5000,
                                   [3 * MiB + 5, 17, 70_000]])
def test_any_inflater_reads_it(fmt, sizes):
    data = _mixed(sum(sizes))
    writes, at = [], 0
    for n in sizes:
        writes.append(data[at:at + n])
        at += n
    out = _written(writes, fmt)
    assert (gzip.decompress(out) if fmt == "gzip" else zlib.decompress(out)) == data
    assert archive.sniff_format(out[:600]) == fmt


def test_random_data_is_stored_and_text_compressed():
    noise = os.urandom(3 * MiB)
    stored = _written([noise], "gzip")
    assert len(stored) < len(noise) * 1.001 + 100  # stored blocks: 5 bytes per 64 KiB
    text = _text(3 * MiB)
    assert len(_written([text], "gzip")) < len(text) // 2


def test_one_thread_and_many_give_the_same_data():
    data = _mixed(5 * MiB)
    assert gzip.decompress(_written([data], "gzip", threads=1)) == data
    assert gzip.decompress(_written([data], "gzip", threads=8)) == data


def test_a_failing_worker_fails_close_and_stops_the_threads(monkeypatch):
    def broken(*_args):
        raise MemoryError("no memory for the block")

    monkeypatch.setattr(deflate, "_deflate", broken)
    writer = deflate.ParallelDeflateWriter(io.BytesIO(), "gzip", 1, 2)
    with pytest.raises(MemoryError):
        for _ in range(20):
            writer.write(bytes(deflate.BLOCK))
        writer.close()
    writer.abort()
    assert not [t for t in threading.enumerate() if t.name.startswith("deflate")]


@pytest.fixture
def big_images(tmp_path):
    """Images across several mapping windows, and small ones, as CRIU leaves them."""
    src = tmp_path / "images"
    src.mkdir()
    (src / "inventory.img").write_bytes(b"inv")
    (src / "pages-1.img").write_bytes(_mixed(archive._MAP_WINDOW * 2 + 3 * MiB + 4096))
    (src / "pagemap-1.img").write_bytes(_text(70_000))
    (src / "empty.img").write_bytes(b"")
    return src


@pytest.mark.parametrize("fmt", ["gzip", "zlib", "tar", "zstd", "lz4"])
def test_big_images_round_trip(fmt, big_images, tmp_path):
    path = tmp_path / archive.archive_name("ck", fmt)
    with open(path, "wb") as f:
        archive.write_archive(str(big_images), f, fmt)
    dest = tmp_path / "out"
    dest.mkdir()
    with open(path, "rb") as f:
        names = archive.extract_archive(f, str(dest), str(path))
    assert sorted(names) == sorted(os.listdir(big_images))
    for name in names:
        assert (dest / name).read_bytes() == (big_images / name).read_bytes()


@pytest.mark.skipif(shutil.which("gzip") is None, reason="no gzip program")
def test_gzip_archive_read_by_gzip_and_tar(big_images, tmp_path):
    """`gzip -t`, `tar -xzf` then `b3sum -c`, and Python's gzip all read a gzip archive."""
    path = tmp_path / "ck.tar.gz"
    with open(path, "wb") as f:
        archive.write_archive(str(big_images), f, "gzip")
    tested = subprocess.run(["gzip", "-t", str(path)], capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stderr
    dest = tmp_path / "untarred"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(dest)], check=True)
    check = subprocess.run(["b3sum", "-c", archive.SUMS_NAME], cwd=dest, capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    pages = (big_images / "pages-1.img").read_bytes()
    assert hashlib.sha256((dest / "pages-1.img").read_bytes()).digest() == hashlib.sha256(pages).digest()
    with gzip.open(path) as f:
        assert len(f.read()) % 512 == 0


@pytest.mark.parametrize("fmt", ["gzip", "zlib"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_in_a_big_archive_is_caught(fmt, where, big_images, tmp_path):
    buf = io.BytesIO()
    archive.write_archive(str(big_images), buf, fmt)
    data = bytearray(buf.getvalue())
    data[int(len(data) * where)] ^= 0x10
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CheckpointError, match="^corrupt archive: "):
        archive.extract_archive(io.BytesIO(bytes(data)), str(dest), "x")


def test_writing_back_passes_every_byte_on(tmp_path):
    """The archive file whose write-back starts as it is written holds what was written."""
    from cedanafs.fsio import WritingBack

    data = _mixed(3 * MiB + 123)
    with open(tmp_path / "out", "wb") as f:
        out = WritingBack(f, every=MiB)
        for off in range(0, len(data), 100_000):
            assert out.write(data[off:off + 100_000]) == len(data[off:off + 100_000])
        out.flush()
        os.fsync(f.fileno())
    assert (tmp_path / "out").read_bytes() == data
