"""A dump archive's pages images hashed while CRIU writes them (app/imagesums.py), the archive
taking those digests and freeing its source as it goes (app/archive.py), and the archive file
written around the page cache (fsio.DirectWriter)."""

import gzip
import blake3
import io
import os
import random
import tarfile
import threading
import time

import pytest

from cedanafs import fsio
from cedanafs.app import archive
from cedanafs.app.imagesums import PagesHasher
from cedanafs.errors import CheckpointError
from cedanafs.priority import set_background, set_priority_of

pytestmark = pytest.mark.unit

MiB = 1 << 20


def _data(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _sha(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class _Writer(threading.Thread):
    """Writes files the way CRIU does: appended in pieces, one pages image after the other."""

    def __init__(self, images, files: dict[str, bytes], piece: int = 100_001):
        super().__init__()
        self.images, self.files, self.piece = images, files, piece

    def run(self):
        for name, data in self.files.items():
            with open(self.images / name, "wb", buffering=0) as f:
                for off in range(0, len(data), self.piece):
                    f.write(data[off:off + self.piece])
                    time.sleep(0.001)


def _images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    return images


def test_pages_hashed_while_they_grow_match_the_finished_files(tmp_path):
    images = _images(tmp_path)
    files = {"pages-1.img": _data(3 * MiB + 123, 1), "pages-2.img": _data(0, 2), "pages-10.img": _data(MiB, 3)}
    with PagesHasher(str(images)) as hasher:
        writer = _Writer(images, files)
        writer.start()
        writer.join()
        (images / "core-1.img").write_bytes(b"not a pages image")
        hasher.criu_done()
        for name, data in files.items():
            assert hasher.covers(name)
            assert hasher.digest(name, len(data)) == _sha(data)
            assert hasher.hashed_upto(name) == len(data)
        assert not hasher.covers("core-1.img")


def test_a_pages_image_is_not_final_before_a_later_one_exists_or_criu_returned(tmp_path):
    images = _images(tmp_path)
    first = _data(2 * MiB, 4)
    (images / "pages-1.img").write_bytes(first[:MiB])
    with PagesHasher(str(images)) as hasher:
        time.sleep(0.05)  # the hasher reads what is there and waits for more
        with open(images / "pages-1.img", "ab") as f:
            f.write(first[MiB:])
        (images / "pages-2.img").write_bytes(b"")  # pages-1.img is final now
        assert hasher.digest("pages-1.img", len(first)) == _sha(first)
        hasher.criu_done()
        assert hasher.digest("pages-2.img", 0) == _sha(b"")


def test_a_size_that_differs_from_what_was_hashed_fails(tmp_path):
    images = _images(tmp_path)
    (images / "pages-1.img").write_bytes(_data(5000, 5))
    with PagesHasher(str(images)) as hasher:
        hasher.criu_done()
        with pytest.raises(CheckpointError, match="changed while it was being archived"):
            hasher.digest("pages-1.img", 4096)


def test_leaving_stops_a_hasher_that_waits_for_a_file_to_grow(tmp_path):
    images = _images(tmp_path)
    (images / "pages-1.img").write_bytes(b"x" * 10)
    hasher = PagesHasher(str(images))
    with hasher:
        time.sleep(0.02)
    assert not [t for t in threading.enumerate() if t.name == "pages-hash"]
    assert not hasher.covers("pages-1.img")


def test_a_hasher_that_failed_says_so_instead_of_a_digest(tmp_path):
    with PagesHasher(str(tmp_path / "gone")) as hasher:
        hasher.criu_done()
        with pytest.raises(CheckpointError, match="could not hash pages-1.img"):
            hasher.digest("pages-1.img", 0)


def test_the_archive_takes_the_digests_taken_elsewhere(tmp_path):
    """The sums file holds what `hashed` says: a wrong digest there makes the archive fail its check."""
    images = _images(tmp_path)
    pages = _data(3 * MiB, 6)
    (images / "pages-1.img").write_bytes(pages)
    (images / "inventory.img").write_bytes(b"inventory")

    class Wrong:
        asked: list = []

        def covers(self, name):
            return name == "pages-1.img"

        def digest(self, name, size):
            self.asked.append((name, size))
            return "0" * 64

        def hashed_upto(self, name):
            return 0

        def reading(self, name, upto):
            pass

    buf = io.BytesIO()
    archive.write_archive(str(images), buf, "gzip", Wrong())
    assert Wrong.asked == [("pages-1.img", len(pages))]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(buf.getvalue()))) as tar:
        sums = tar.extractfile(archive.SUMS_NAME).read().decode()
    assert f"{'0' * 64}  pages-1.img\n" in sums and f"{_sha(b'inventory')}  inventory.img\n" in sums
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(CheckpointError, match="pages-1.img does not match its BLAKE3"):
        archive.extract_archive(io.BytesIO(buf.getvalue()), str(dest), "x")


def test_an_archive_of_pages_hashed_while_written_restores_and_verifies(tmp_path):
    images = _images(tmp_path)
    files = {"pages-1.img": _data(5 * MiB + 7, 7), "pages-2.img": _data(2 * MiB, 8)}
    with PagesHasher(str(images)) as hasher:
        writer = _Writer(images, files, piece=1 << 18)
        writer.start()
        writer.join()
        (images / "inventory.img").write_bytes(b"inventory")
        hasher.criu_done()
        buf = io.BytesIO()
        archive.write_archive(str(images), buf, "gzip", hasher)
    dest = tmp_path / "out"
    dest.mkdir()
    archive.extract_archive(io.BytesIO(buf.getvalue()), str(dest), "x")
    for name, data in files.items():
        assert (dest / name).read_bytes() == data


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


def test_consume_frees_nothing_the_hasher_has_not_read_yet(tmp_path):
    images = _images(tmp_path)
    pages = _data(40 * MiB, 10)
    (images / "pages-1.img").write_bytes(pages)
    (images / "inventory.img").write_bytes(b"inventory")

    class Behind:
        def covers(self, name):
            return name == "pages-1.img"

        def digest(self, name, size):
            return _sha(pages)

        def hashed_upto(self, name):
            return 0

        def reading(self, name, upto):
            pass

    before = _blocks(images / "pages-1.img")
    archive.write_archive(str(images), io.BytesIO(), "gzip", Behind(), consume=True)
    assert _blocks(images / "pages-1.img") == before
    assert (images / "pages-1.img").read_bytes() == pages


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


def test_after_criu_the_hasher_yields_until_the_archive_catches_up_with_it(tmp_path):
    images = _images(tmp_path)
    with open(images / "pages-1.img", "wb") as f:
        f.truncate(1 << 30)  # sparse: long enough to hash that the thread is still at it below
    with PagesHasher(str(images)) as hasher:
        hasher.criu_done()
        tid = hasher._thread.native_id
        assert os.getpriority(os.PRIO_PROCESS, tid) == 10
        hasher.reading("pages-1.img", 8 * MiB)  # only the first window: the hasher may be past it
        hasher.reading("pages-1.img", 1 << 30)  # past it: the archive would wait for the hasher
        assert os.getpriority(os.PRIO_PROCESS, tid) == 0


def test_another_thread_can_be_moved_out_of_idle_priority():
    parked = threading.Event()
    release = threading.Event()
    seen = {}

    def idle():
        set_background(True)
        parked.set()
        release.wait()
        seen["policy"] = os.sched_getscheduler(0)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    thread = threading.Thread(target=idle)
    thread.start()
    parked.wait()
    if os.sched_getscheduler(thread.native_id) != os.SCHED_IDLE:
        release.set()
        thread.join()
        pytest.skip("threads cannot go to SCHED_IDLE here")
    set_priority_of(thread.native_id, 10)
    release.set()
    thread.join()
    assert seen == {"policy": os.SCHED_OTHER, "nice": 10}
