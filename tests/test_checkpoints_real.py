"""Checkpoint store end to end with real CRIU images: import/export on every backend, dedup, restore.

Images come from `criu dump` of bench/workload.py (a process holding zeros, text and random
bytes); exported directories are restored with plain `criu restore` and must report the memory
checksum the process had when it was dumped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cedanafs.app.checkpoints import Checkpoints, open_checkpoints
from cedanafs.config import CacheSettings, DbSettings, Settings, StoreSettings
from tests.fixtures_procs import checksum_after_signal, pid_alive, wait_for

CRIU = "/usr/local/sbin/criu"

pytestmark = [pytest.mark.real, pytest.mark.slow]


def settings_for(tmp_path: Path, url: str, db: str = "index.db") -> Settings:
    return Settings(store=StoreSettings(url=url), db=DbSettings(path=str(tmp_path / db)),
                    cache=CacheSettings(dir=str(tmp_path / "cache")))


def criu_dump(pid: int, images: Path) -> Path:
    images.mkdir(parents=True)
    subprocess.run([CRIU, "dump", "-t", str(pid), "-D", str(images), "--shell-job", "--leave-running",
                    "-o", "dump.log"], check=True, timeout=120, capture_output=True)
    return images


def criu_restore(images: Path, tmp_path: Path) -> int:
    pidfile = tmp_path / f"restored-{time.monotonic_ns()}.pid"
    result = subprocess.run([CRIU, "restore", "-D", str(images), "-d", "--shell-job", "--pidfile", str(pidfile),
                             "-o", str(tmp_path / "restore.log")], timeout=120, capture_output=True, text=True)
    assert result.returncode == 0, (tmp_path / "restore.log").read_text()[-2000:]
    return int(pidfile.read_text())


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256, mode, mtime_ns) of every file below root."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() else b""
        out[path.relative_to(root).as_posix()] = (hashlib.sha256(data).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


def stop(proc_or_pid) -> None:
    """Kill a process and wait until its pid is free (a restore of the same images needs it)."""
    pid = proc_or_pid if isinstance(proc_or_pid, int) else proc_or_pid.pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not isinstance(proc_or_pid, int):
        proc_or_pid.wait(timeout=10)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20, what=f"pid {pid} to be gone")


def restore_and_check(images: Path, tmp_path: Path, procs, state: Path, checksum: str) -> None:
    pid = criu_restore(images, tmp_path)
    procs.watch(pid)
    try:
        assert pid_alive(pid)
        assert checksum_after_signal(pid, state)["checksum"] == checksum
    finally:
        stop(pid)


@pytest.fixture
def workload(procs, tmp_path):
    """A running workload: (Popen, state path, first state)."""
    state = tmp_path / "state.json"
    proc, info = procs.workload(state, size="32M")
    return proc, state, info


def test_import_export_byte_identical_and_restores(any_backend_url, workload, procs, tmp_path):
    proc, state, info = workload
    images = criu_dump(proc.pid, tmp_path / "images")
    settings = settings_for(tmp_path, any_backend_url)
    with open_checkpoints(settings) as cps:
        m = cps.import_dir(images, "wl")
        assert {f.path for f in m.files} == {p.name for p in images.iterdir()}
        assert m.size == sum(p.stat().st_size for p in images.iterdir())
        assert cps.verify(m.id).ok
    # A second machine: the same store, its own index database.
    with open_checkpoints(settings_for(tmp_path, any_backend_url, db="other.db")) as other:
        assert [(i.job, i.id) for i in other.list()] == [("wl", m.id)]
        other.export(m.id, tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(images)
    stop(proc)
    restore_and_check(tmp_path / "out", tmp_path, procs, state, info["checksum"])


def _dump_after_change(proc, state: Path, images: Path) -> dict:
    before = json.loads(state.read_text())["generation"]
    os.kill(proc.pid, signal.SIGUSR2)
    now = wait_for(lambda: (s := json.loads(state.read_text()))["generation"] > before and s,
                   timeout=30, what="workload to change its memory")
    criu_dump(proc.pid, images)
    return now


def test_second_checkpoint_stores_only_what_changed(procs, tmp_path):
    state = tmp_path / "state.json"
    proc, first = procs.workload(state, size="64M")
    criu_dump(proc.pid, tmp_path / "c1")
    time.sleep(1)
    second = _dump_after_change(proc, state, tmp_path / "c2")
    assert second["checksum"] != first["checksum"]
    with open_checkpoints(settings_for(tmp_path, str(tmp_path / "store"))) as cps:
        m1 = cps.import_dir(tmp_path / "c1", "job")
        after1 = cps.store_stats().stored_bytes
        m2 = cps.import_dir(tmp_path / "c2", "job")
        stats = cps.store_stats()
        added2 = stats.stored_bytes - after1
        print(f"\ncheckpoint 1: logical {m1.size} B, stored {after1} B;"
              f" checkpoint 2: logical {m2.size} B, added {added2} B ({100 * added2 / after1:.1f}% of the first);"
              f" store: dedup {stats.dedup_ratio:.2f}, compression {stats.compression_ratio:.2f}")
        assert m2.parent == m1.id
        assert added2 < after1 / 3
        assert m2.meta["transfer"]["stored_bytes"] < after1 / 3
        cps.export(m1.id, tmp_path / "e1")
        cps.export(m2.id, tmp_path / "e2")
    assert tree_digest(tmp_path / "e1") == tree_digest(tmp_path / "c1")
    assert tree_digest(tmp_path / "e2") == tree_digest(tmp_path / "c2")
    stop(proc)
    restore_and_check(tmp_path / "e1", tmp_path, procs, state, first["checksum"])
    restore_and_check(tmp_path / "e2", tmp_path, procs, state, second["checksum"])


def test_gc_during_import_keeps_the_running_import(workload, tmp_path):
    proc, _, _ = workload
    images = criu_dump(proc.pid, tmp_path / "images")
    settings = settings_for(tmp_path, str(tmp_path / "store"))
    with open_checkpoints(settings) as cps:
        # Leave old, unreferenced chunks behind that the next import will reuse: the case where a
        # GC that ignored writers would delete chunks out from under a checkpoint being written.
        cps.delete(cps.import_dir(images, "job").id)
        done: dict = {}

        def run_import() -> None:
            with open_checkpoints(settings, db_path=str(tmp_path / "writer.db")) as writer:
                done["manifest"] = writer.import_dir(images, "job")

        import threading
        thread = threading.Thread(target=run_import)
        thread.start()
        passes = []
        while thread.is_alive() or not passes:
            passes.append(cps.gc(grace=0))
        thread.join(timeout=120)
        m = done["manifest"]
        assert cps.verify(m.id).ok
        cps.export(m.id, tmp_path / "out")
        assert tree_digest(tmp_path / "out") == tree_digest(images)
        # Once nothing is being written, the old checkpoint's chunks that nobody uses go.
        cps.gc(grace=0)
        assert cps.store_stats().unreferenced_chunks == 0
    print(f"\n{len(passes)} gc passes ran during the import; deleted {sum(p.deleted for p in passes)} chunks")


def test_gc_after_delete_frees_unique_chunks(workload, tmp_path):
    proc, state, _ = workload
    c1 = criu_dump(proc.pid, tmp_path / "c1")
    _dump_after_change(proc, state, tmp_path / "c2")
    with open_checkpoints(settings_for(tmp_path, str(tmp_path / "store"))) as cps:
        m1 = cps.import_dir(c1, "job")
        m2 = cps.import_dir(tmp_path / "c2", "job")
        only2 = m2.digests() - m1.digests()
        assert only2, "the second checkpoint should have chunks of its own"
        before = cps.store_stats()
        assert cps.gc(grace=0).deleted == 0
        cps.delete(m2.id)
        assert cps.gc(grace=3600).deleted == 0  # young chunks survive the grace period
        result = cps.gc(grace=0)
        assert result.deleted == len(only2)
        after = cps.store_stats()
        assert after.chunk_count == before.chunk_count - len(only2)
        assert not any(cps.store.chunks.exists(d) for d in only2)
        assert all(cps.store.chunks.exists(d) for d in m1.digests())
        assert cps.verify(m1.id).ok


@pytest.mark.expect_warnings
def test_corrupt_chunk_named_and_never_exported(workload, tmp_path):
    proc, _, _ = workload
    images = criu_dump(proc.pid, tmp_path / "images")
    store_dir = tmp_path / "store"
    with open_checkpoints(settings_for(tmp_path, str(store_dir))) as cps:
        m = cps.import_dir(images, "job")
    pages = max((f for f in m.files if f.chunks), key=lambda f: f.size)
    bad = pages.chunks[len(pages.chunks) // 2]
    from cedanafs.streamer import codecs
    # Valid encoding of other bytes: only the digest check can catch it.
    (store_dir / "chunks-b3" / bad.digest[:2] / bad.digest).write_bytes(codecs.encode(b"\x00" * bad.size, "zstd"))
    from cedanafs.errors import CheckpointError
    with open_checkpoints(settings_for(tmp_path, str(store_dir))) as cps:
        with pytest.raises(CheckpointError) as err:
            cps.verify(m.id)
        assert m.name in str(err.value) and pages.path in str(err.value) and bad.digest in str(err.value)
        with pytest.raises(CheckpointError, match=bad.digest):
            cps.export(m.id, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".export-" in p.name] == []
