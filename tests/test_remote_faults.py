"""Faults of a remote store under the daemon: the bucket goes away, a chunk is lost or damaged.

- The bucket unreachable during a dump: the dump fails, the process runs on, nothing is
  committed; after the server is back, a dump works.
- Unreachable during a lazy restore: the restore fails loudly before anything runs.
- A chunk missing from the bucket while a lazy restore streams memory in: the lazy-pages server
  fails, and the restored process is killed rather than left running on zero pages; the chunk is
  named in the mount's log.
- A chunk corrupt in the bucket on an eager restore: the restore fails naming the chunk, no
  process runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from cedanafs.catalog.manifest import decode_manifest
from cedanafs.config import load_settings
from cedanafs.streamer import open_store_backend
from cedanafs.criu.images import read_pagemap
from cedanafs.streamer.chunkstore import ChunkStore
from cedanafs.streamer.packs import PackedChunk
from cedanafs.types import PAGE_SIZE
from tests.fixtures_daemon import ALIVE, wait_status
from tests.fixtures_procs import checksum_after_signal, pid_alive, wait_for
from tests.fixtures_servers import s3_client, s3_environ
from tests.test_remote_daemon import Machines, run_workload

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def private_moto(start_moto, monkeypatch):
    """A moto server of this test's own (it gets killed), with a bucket, and the AWS_* env for it."""
    server = start_moto()
    for key, value in s3_environ(server.endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3_client(server.endpoint).create_bucket(Bucket="faults")
    return server


@pytest.fixture
def machines(private_moto):
    m = Machines("s3://faults/store")
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def shared_machines(s3_url):
    m = Machines(s3_url)
    try:
        yield m
    finally:
        m.cleanup()


def no_process(pid: int) -> bool:
    return not pid_alive(pid)


def test_bucket_unreachable_during_a_dump(machines, private_moto, procs):
    a = machines.start("dump-a")
    state = a.root / "w.json"
    info = run_workload(a, "w", state, size="128M")
    pid = info["pid"]
    procs.watch(pid)
    jobdir = a.mount_dir / "jobs" / "w"
    dumping = subprocess.Popen([sys.executable, "-m", "cedanafs.cli", "dump", "job", "w"], env=a.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: jobdir.exists() and [n for n in os.listdir(jobdir) if n != "latest"], timeout=60,
                 interval=0.01, what="the dump to start writing into the mount")
        private_moto.kill()
        _, err = dumping.communicate(timeout=240)
    finally:
        if dumping.poll() is None:
            dumping.kill()
    assert dumping.returncode != 0, "the dump succeeded with the bucket gone"
    assert err.strip() and "Traceback" not in err, err
    # The process runs on with its memory; nothing was committed.
    job = wait_status(a, "w", ALIVE)
    assert job["pid"] == pid
    wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED, what="the process to be resumed")
    assert checksum_after_signal(pid, state)["checksum"] == info["checksum"]

    # The server comes back (empty: moto keeps nothing): nothing half-written is listed; a new dump works.
    private_moto.start()
    s3_client(private_moto.endpoint).create_bucket(Bucket="faults")
    assert a.checkpoints("w") == []
    a.cedana("dump", "job", "w", "--leave-running", check=True, timeout=240)
    [ckpt] = wait_for(lambda: a.checkpoints("w"), what="the new checkpoint to be listed")
    a.cedana("checkpoint", "verify", f"w/{ckpt['id']}", check=True)


def test_bucket_unreachable_during_a_lazy_restore(machines, private_moto, procs):
    a = machines.start("lazy-a")
    b = machines.start("lazy-b")
    state = a.root / "w.json"
    info = run_workload(a, "w", state)
    procs.watch(info["pid"])
    a.cedana("dump", "job", "w", check=True)
    wait_for(lambda: no_process(info["pid"]), what="the dumped job to stop")
    ckpt = wait_for(lambda: b.jobs().get("w"), what="the second daemon to see the job")["checkpoint"]
    # The mount's own catalog shows it up to its refresh interval after the daemon's does.
    wait_for((b.mount_dir / "jobs" / "w" / ckpt).is_dir, what="the second mount to show the checkpoint")
    assert "pages-1.img" in os.listdir(b.mount_dir / "jobs" / "w" / ckpt)  # its manifest is loaded

    private_moto.kill()
    result = b.cedana("restore", "job", "w", "--lazy", timeout=240)
    assert result.returncode != 0, "a lazy restore succeeded without its store"
    assert "nothing was restored" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert no_process(info["pid"]), "a process runs without its memory"
    assert b.jobs().get("w", {}).get("status") not in ALIVE


def _manifest(url: str, key_file, job: str, ckpt: str):
    """A checkpoint's manifest, read through the (encrypted) store with the machines' key."""
    settings = load_settings(override_json=json.dumps({"store": {"url": url, "key_file": str(key_file)}}))
    backend = open_store_backend(url, settings)
    try:
        keys = list(backend.list(f"manifests/{job}/{ckpt}/"))
        assert len(keys) == 1, keys  # one manifest per name: manifests/<job>/<id>/<commit>.json
        return decode_manifest(backend.get(keys[0]))
    finally:
        backend.close()


def _lazy_chunks_of_pages(machines: Machines, ckpt_dir, job: str, ckpt: str) -> list[str]:
    """The digests of the chunks of pages-*.img that only lazy pages use (not read before the process runs)."""
    manifest = _manifest(machines.url, machines.key_file, job, ckpt)
    pid = int(next(n for n in os.listdir(ckpt_dir) if n.startswith("pagemap-"))[len("pagemap-"):-len(".img")])
    name, ranges = read_pagemap(str(ckpt_dir), pid)
    eager = [(r.offset, r.offset + r.length) for r in ranges if not r.lazy] + [(0, PAGE_SIZE)]
    entry = next(f for f in manifest.files if f.path == name)
    counts: dict[str, int] = {}
    for f in manifest.files:
        for c in f.chunks:
            counts[c.digest] = counts.get(c.digest, 0) + 1
    pos, candidates = 0, []
    for c in entry.chunks:
        if counts[c.digest] == 1 and all(pos + c.size <= lo or pos >= hi for lo, hi in eager):
            candidates.append(c.digest)
        pos += c.size
    assert candidates, "no chunk of the pages image is used by lazy pages only"
    return candidates


def _lazy_packed_chunk(machines: Machines, candidates: list[str]) -> tuple[str, PackedChunk]:
    """A chunk of `candidates` and where it lies, in a pack (a bucket store's chunks are packed)
    whose every chunk is one of them: losing or damaging that pack touches lazy pages only."""
    settings = load_settings(override_json=json.dumps({"store": {"url": machines.url,
                                                                 "key_file": str(machines.key_file)}}))
    backend = open_store_backend(machines.url, settings)
    try:
        chunks = ChunkStore(backend, id_key=getattr(backend, "id_key", None), pack_size=settings.store.pack_size)
        wanted = set(candidates)
        for digest in candidates[len(candidates) // 2:] + candidates[:len(candidates) // 2]:
            where = chunks.location(digest)
            assert where is not None, f"chunk {digest} is not in a pack"
            if set(chunks.pack_members()[where.pack]) <= wanted:
                return digest, where
    finally:
        backend.close()
    raise AssertionError("no pack holds only chunks that lazy pages use")


def _pack_members(machines: Machines, pack: str) -> list[str]:
    settings = load_settings(override_json=json.dumps({"store": {"url": machines.url,
                                                                 "key_file": str(machines.key_file)}}))
    backend = open_store_backend(machines.url, settings)
    try:
        chunks = ChunkStore(backend, id_key=getattr(backend, "id_key", None), pack_size=settings.store.pack_size)
        list(chunks.list_digests())  # reads the pack indexes
        return chunks.pack_members()[pack]
    finally:
        backend.close()


def _dumped_then_seen_elsewhere(shared_machines, moto_server, procs, name: str):
    """Machine A dumps a workload job; machine B sees it. Returns B, the job's info, and a chunk
    that only lazy pages need: its digest, the bucket, the key of its pack there and where it lies."""
    a = shared_machines.start(f"{name}-a")
    b = shared_machines.start(f"{name}-b")
    info = run_workload(a, "w", a.root / "w.json")
    procs.watch(info["pid"])
    a.cedana("dump", "job", "w", check=True)
    wait_for(lambda: no_process(info["pid"]), what="the dumped job to stop")
    ckpt = wait_for(lambda: b.jobs().get("w"), what="the second daemon to see the job")["checkpoint"]
    # The mount's own catalog shows it up to its refresh interval after the daemon's does.
    wait_for((b.mount_dir / "jobs" / "w" / ckpt).is_dir, what="the second mount to show the checkpoint")
    candidates = _lazy_chunks_of_pages(shared_machines, b.mount_dir / "jobs" / "w" / ckpt, "w", ckpt)
    digest, where = _lazy_packed_chunk(shared_machines, candidates)
    bucket, _, prefix = shared_machines.url[len("s3://"):].partition("/")
    return b, info, digest, bucket, f"{prefix}/{where.pack}", where


def test_missing_chunk_during_a_lazy_restore_kills_the_restored_process(shared_machines, moto_server, procs):
    b, info, digest, bucket, key, where = _dumped_then_seen_elsewhere(shared_machines, moto_server, procs, "miss")
    members = _pack_members(shared_machines, where.pack)
    s3_client(moto_server.endpoint).delete_object(Bucket=bucket, Key=key)  # the pack holding it

    b.cedana("restore", "job", "w", "--lazy", check=True)  # runs: the lost chunk is needed only later
    procs.watch(info["pid"])
    # The lazy-pages server cannot send those pages: the process must not run on with zeros there.
    wait_for(lambda: no_process(info["pid"]), timeout=180, what="the restored process to be killed")
    wait_status(b, "w", ("halted",), timeout=60)
    mount_log = (b.db_path.parent / "mount.log").read_text()
    assert any(d in mount_log for d in members), "no chunk of the lost pack is named"
    wait_for(lambda: "lazy restore from" in b.log_path.read_text(), what="the daemon to report the failure")


def test_corrupt_chunk_on_an_eager_restore_is_named(shared_machines, moto_server, procs):
    b, info, digest, bucket, key, where = _dumped_then_seen_elsewhere(shared_machines, moto_server, procs, "bad")
    client = s3_client(moto_server.endpoint)
    stored = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    start = where.offset + where.length // 2  # inside the chunk's sealed bytes in its pack, as bit rot would
    stored[start:start + 64] = bytes(64)
    client.put_object(Bucket=bucket, Key=key, Body=bytes(stored))

    result = b.cedana("restore", "job", "w", timeout=240)
    assert result.returncode != 0, "a restore from a corrupt chunk succeeded"
    assert digest[:12] in result.stderr, f"the corrupt chunk is not named: {result.stderr}"
    assert no_process(info["pid"])
    assert b.jobs()["w"]["status"] not in ALIVE
