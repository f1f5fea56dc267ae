"""`--streams N` and `store.memory_limit` on the way to a remote store.

Unit tier: an instrumented slow backend counts uploads in flight and bytes held inside put().
Real path: `cedana dump process --streams N` into a mount over moto with a small memory limit;
the mount server's peak memory stays far below the checkpoint's size, and the checkpoint restores.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from cedanafs.streamer import Store
from cedanafs.streamer.backends.memory import MemoryBackend
from cedanafs.streamer.chunker import ChunkerSpec
from tests.test_streamer_units import mem_url  # noqa: F401 - fixture
from tests.fixtures_procs import checksum_after_signal, wait_for

pytestmark = pytest.mark.real

CHUNK = 128 << 10


class CountingBackend(MemoryBackend):
    """Counts chunk uploads in flight and the bytes inside put(); sleeps so they overlap."""

    def __init__(self, name: str):
        super().__init__(name)
        self.lock = threading.Lock()
        self.puts = self.peak_puts = self.bytes = self.peak_bytes = 0

    def put(self, key, data):
        chunk = key.startswith("chunks-b3/")
        with self.lock:
            if chunk:
                self.puts += 1
                self.peak_puts = max(self.peak_puts, self.puts)
            self.bytes += len(data)
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        try:
            time.sleep(0.02)
            super().put(key, data)
        finally:
            with self.lock:
                self.puts -= chunk
                self.bytes -= len(data)


@pytest.fixture
def counting(mem_url):
    backend = CountingBackend(mem_url.split("//")[1])
    stores = []

    def make(**kw) -> Store:
        store = Store(backend, codec="none", chunker=ChunkerSpec.for_size("fixed", CHUNK), **kw)
        stores.append(store)
        return store

    try:
        yield backend, make
    finally:
        for store in stores:
            store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("streams", [1, 3])
def test_streams_caps_the_uploads_of_a_writer(counting, streams):
    backend, make = counting
    store = make(streams=16, memory_limit=64 << 20)
    writer = store.writer(streams=streams)
    writer.write(os.urandom(6 << 20))
    content = writer.close()
    assert backend.peak_puts <= streams
    if streams > 1:
        assert backend.peak_puts >= 2, "uploads ran one at a time"
    assert store.read_bytes(content) and store.budget.used == 0


@pytest.mark.timeout(60)
def test_memory_limit_holds_with_many_streams(counting):
    backend, make = counting
    limit = 1 << 20
    store = make(streams=32, memory_limit=limit)
    writers = [store.writer() for _ in range(4)]
    threads = [threading.Thread(target=lambda w=w: (w.write(os.urandom(4 << 20)), w.close())) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.budget.peak <= limit
    assert backend.peak_bytes <= limit + 8 * 1024  # +1 codec byte per chunk
    assert store.budget.used == 0


@pytest.mark.timeout(60)
def test_aborted_writer_gives_its_budget_back(counting):
    """Cancelled uploads (a dump that failed) must not shrink the budget for the next dump."""
    _, make = counting
    store = make(streams=1, memory_limit=4 * CHUNK)
    writer = store.writer()
    writer.write(os.urandom(4 * CHUNK))  # one uploading, the rest queued on the pool of one
    writer.abort()
    wait_for(lambda: store.budget.used == 0, timeout=10, what="the budget to be given back")
    again = store.writer()
    again.write(os.urandom(8 * CHUNK))
    assert again.close().size == 8 * CHUNK


def _vm(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) << 10
    return 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dump_with_streams_into_a_mount_over_s3_holds_the_memory_limit(mount_factory, s3_url, procs, monkeypatch):
    monkeypatch.setenv("CEDANA_STORE_MEMORY_LIMIT", "16M")
    monkeypatch.setenv("CEDANA_CHECKPOINT_STREAMS", "4")
    mnt = mount_factory(store=s3_url)
    mnt.mount()
    server = mnt.server_pid()
    state = mnt.base / "w.json"
    proc, info = procs.workload(state, size="128M")
    before = _vm(server, "VmRSS")
    dumped = mnt.cedana("dump", "process", proc.pid, "--dir", mnt.jobs / "s", "--name", "c1", "--streams", "2",
                        "--no-server", timeout=240)
    assert dumped.returncode == 0, dumped.stderr
    peak = _vm(server, "VmHWM")
    assert peak - before < 96 << 20, f"the mount server grew by {(peak - before) >> 20} MiB for a 128 MiB dump"
    proc.wait(timeout=30)
    pid_file = mnt.base / "pid"
    restored = mnt.cedana("restore", "process", "--path", mnt.jobs / "s" / "c1", "--lazy", "--streams", "4",
                          "--pid-file", pid_file, timeout=240)
    assert restored.returncode == 0, restored.stderr
    pid = int(pid_file.read_text())
    procs.watch(pid)
    assert checksum_after_signal(pid, state, timeout=120)["checksum"] == info["checksum"]
