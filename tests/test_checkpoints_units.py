"""cedanafs.app.checkpoints over memory:// with small synthetic images: commit rules and failures."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from cedanafs.app.checkpoints import Checkpoints
from cedanafs.catalog import Catalog, manifest_key
from cedanafs.errors import AlreadyExists, CheckpointError, StoreError
from cedanafs.streamer import ChunkerSpec, Store
from cedanafs.streamer.backends import MemoryBackend
from cedanafs.streamer.backends.memory import forget
from cedanafs.streamer.errors import TemporaryFailure

pytestmark = pytest.mark.unit


class FlakyBackend(MemoryBackend):
    """A memory backend whose chunk uploads start failing after `ok_puts` of them."""

    def __init__(self, name: str, ok_puts: int):
        super().__init__(name)
        self.ok_puts = ok_puts
        self._n = 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("chunks-b3/"):
            with self._lock:
                self._n += 1
                if self._n > self.ok_puts:
                    raise TemporaryFailure(f"{self.url}/{key}: temporary failure: injected")
        super().put(key, data)


@pytest.fixture
def name():
    n = f"cp-{uuid.uuid4().hex[:10]}"
    yield n
    forget(n)


def service(backend, tmp_path: Path, db: str = "db") -> Checkpoints:
    # Small chunks so a few MiB make many chunks.
    store = Store(backend, chunker=ChunkerSpec.for_size("cdc", 64 << 10), memory_limit=4 << 20)
    return Checkpoints(store, Catalog(backend, tmp_path / db))


def make_images(root: Path, seed: bytes = b"a", size: int = 3 << 20) -> Path:
    root.mkdir(parents=True)
    (root / "inventory.img").write_bytes(b"inv" + seed)
    block = b"".join(bytes([i % 251]) * 4096 for i in range(64)) + seed * 4096
    (root / "pages-1.img").write_bytes((block * (size // len(block) + 1))[:size])
    return root


def test_failed_upload_commits_nothing_and_next_import_works(name, tmp_path):
    images = make_images(tmp_path / "img")
    flaky = FlakyBackend(name, ok_puts=3)
    with service(flaky, tmp_path) as cps:
        with pytest.raises(StoreError, match="injected"):
            cps.import_dir(images, "job")
        assert cps.list() == []
        assert list(flaky.list("manifests/")) == []
        assert list(flaky.list("leases/")) == []  # the lease was released
        flaky.ok_puts = 10 ** 9
        m = cps.import_dir(images, "job")
        assert [i.id for i in cps.list()] == [m.id] and cps.verify(m.id).ok


def test_concurrent_imports_of_one_job(name, tmp_path):
    images = [make_images(tmp_path / f"img{i}", seed=bytes([65 + i])) for i in range(4)]
    backend = MemoryBackend(name)
    results, errors = [], []

    def run(path: Path) -> None:
        try:
            with service(backend, tmp_path, db=f"{path.name}.db") as cps:
                results.append(cps.import_dir(path, "shared"))
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len({m.id for m in results}) == 4
    with service(backend, tmp_path) as cps:
        assert {i.id for i in cps.list("shared")} == {m.id for m in results}
        for m in results:
            assert cps.verify(m.id).ok


def test_named_checkpoint_refused_twice_before_uploading(name, tmp_path):
    images = make_images(tmp_path / "img")
    backend = MemoryBackend(name)
    with service(backend, tmp_path) as cps:
        cps.import_dir(images, "j", "c1")
        chunks = set(backend.list("chunks-b3/"))
        (images / "pages-1.img").write_bytes(os.urandom(1 << 20))
        with pytest.raises(AlreadyExists):
            cps.import_dir(images, "j", "c1")
        assert set(backend.list("chunks-b3/")) == chunks


def test_special_files_and_missing_inventory_refused(name, tmp_path):
    images = make_images(tmp_path / "img")
    os.mkfifo(images / "fifo")
    with service(MemoryBackend(name), tmp_path) as cps:
        with pytest.raises(CheckpointError, match="special files"):
            cps.import_dir(images, "j")
        os.unlink(images / "fifo")
        os.unlink(images / "inventory.img")
        with pytest.raises(CheckpointError, match="no inventory.img"):
            cps.import_dir(images, "j")


def test_export_into_empty_dir_and_inspect_exclusive_bytes(name, tmp_path):
    a = make_images(tmp_path / "a", seed=b"a")
    b = make_images(tmp_path / "b", seed=b"a")
    with open(b / "pages-1.img", "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(8192))  # two pages change; the rest dedups
    with service(MemoryBackend(name), tmp_path) as cps:
        ma, mb = cps.import_dir(a, "j"), cps.import_dir(b, "j")
        ia, ib = cps.inspect(ma.id), cps.inspect(mb.id)
        changed = mb.digests() - ma.digests()
        assert 0 < len(changed) <= 3
        assert ib.exclusive_stored_bytes == sum(cps.store.chunks.stored_size(d) for d in changed)
        assert ia.stored_bytes == sum(cps.store.chunks.stored_size(d) for d in ma.digests())
        (tmp_path / "out").mkdir()
        cps.export(mb.id, tmp_path / "out")
        assert (tmp_path / "out" / "pages-1.img").read_bytes() == (b / "pages-1.img").read_bytes()
        stats = cps.store_stats()
        assert stats.checkpoints == 2 and stats.dedup_ratio > 1.8 and stats.unreferenced_chunks == 0


def test_an_import_keeps_the_owner_of_its_directory_and_an_export_gives_it_back(name, tmp_path):
    images = make_images(tmp_path / "img")
    os.chown(images, 65534, 65534)
    with service(MemoryBackend(name), tmp_path) as cps:
        m = cps.import_dir(images, "job")
        assert (m.meta["uid"], m.meta["gid"]) == ("65534", "65534")
        out = tmp_path / "out"
        cps.export(m.id, out)  # ...and an export gives it back to that owner, for that owner alone
        st = out.stat()
        assert (st.st_mode & 0o777, st.st_uid, (out / "pages-1.img").stat().st_uid) == (0o700, 65534, 65534)
