"""Dumps into the mount through the local spool (app/capture.py): the spool path, its fallbacks,
a commit that fails after CRIU is done, GC running while a dump reuses chunks, eager restores
copied out of the mount. Real CRIU, real mounts; every restore checks the workload's memory."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_procs import checksum_after_signal, pid_alive, spool_emptied, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]


def _configure(m, **sections) -> None:
    """Add config sections to a (not yet mounted) Mount's config.json."""
    path = m.config_dir / "config.json"
    config = json.loads(path.read_text())
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(json.dumps(config))


def _dump(m, pid: int, job: str, tmp_path: Path, *extra: str) -> dict:
    result = tmp_path / f"result-{time.monotonic_ns()}.json"
    r = m.cedana("dump", "process", pid, "--dir", m.jobs / job, "--result-file", result, *extra)
    assert r.returncode == 0, r.stderr
    return json.loads(result.read_text())


def _restore_and_check(m, ckpt: str, state: Path, before: dict, procs, tmp_path: Path, *extra: str) -> None:
    state.unlink(missing_ok=True)
    r = m.cedana("restore", "process", "--path", ckpt, "--pid-file", tmp_path / "pid", *extra)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    after = checksum_after_signal(pid, state, timeout=120)
    assert after["checksum"] == before["checksum"], "restored memory differs from the dumped memory"


@pytest.fixture(params=[False, True], ids=["after-criu", "follow"])
def spool_mount(request, mount_factory, monkeypatch, tmp_path):
    """A mount whose dumps go through a private spool, taken in after CRIU or while it writes."""
    m = mount_factory()
    _configure(m, spool={"dir": str(tmp_path / "spool"), "follow": request.param})
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(m.config_dir))
    m.mount()
    return m


@pytest.mark.parametrize("leave_running", [True, False], ids=["leave-running", "stopped-until-committed"])
def test_dump_goes_through_the_spool_and_restores(leave_running, spool_mount, tmp_path, procs):
    m = spool_mount
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="64M")
    extra = ["--leave-running"] if leave_running else []
    result = _dump(m, proc.pid, "sp", tmp_path, *extra)
    assert result["via"] == "spool"
    assert 0 < result["captured_after"] <= result["committed_after"]
    assert m.state(result["path"]) == "sealed"
    spool_emptied(tmp_path / "spool")
    if leave_running:
        assert pid_alive(proc.pid)
        proc.kill()
    proc.wait(timeout=30)  # without --leave-running it is killed once the checkpoint is committed
    _restore_and_check(m, result["path"], state, before, procs, tmp_path)


def _chunk_codecs(store: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in store.glob("chunks-b3/*/*"):
        with open(path, "rb") as f:
            codec = {0: "none", 1: "zstd", 2: "lz4"}[f.read(1)[0]]
        counts[codec] = counts.get(codec, 0) + 1
    return counts


def test_chunks_are_compressed_after_the_commit_and_still_restore(spool_mount, tmp_path, procs):
    """A local store's mount commits new chunks plain and compresses them afterwards (root xattr
    user.cedana.compaction counts what is left); a restore after that gives the same memory back."""
    m = spool_mount
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="64M")
    result = _dump(m, proc.pid, "cz", tmp_path, "--leave-running")
    proc.kill()
    proc.wait(timeout=30)
    pending = json.loads(os.getxattr(m.mountpoint, "user.cedana.compaction"))
    assert pending["after_commit"] is True
    assert wait_for(lambda: json.loads(os.getxattr(m.mountpoint, "user.cedana.compaction"))["chunks"] == 0,
                    timeout=120)
    codecs = _chunk_codecs(m.store)
    assert codecs.get("lz4", 0) > 0, f"no chunk was compressed after the commit: {codecs}"
    _restore_and_check(m, result["path"], state, before, procs, tmp_path)


def test_spool_too_small_falls_back_to_the_mount(mount_factory, monkeypatch, tmp_path, procs):
    m = mount_factory()
    _configure(m, spool={"dir": str(tmp_path / "spool"), "size": "1M"})
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(m.config_dir))
    m.mount()
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="32M")
    result = _dump(m, proc.pid, "small", tmp_path)
    assert result["via"] == "mount"
    proc.wait(timeout=30)
    _restore_and_check(m, result["path"], state, before, procs, tmp_path)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 24 MiB tmpfs, unmounted at the end."""
    path = tmp_path / "tiny"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_spool_filling_up_mid_dump_falls_back_to_the_mount(mount_factory, monkeypatch, tmp_path, procs,
                                                          tiny_tmpfs):
    """The prediction says it fits, CRIU runs out of space in the spool: the process was resumed
    by CRIU, and the dump is done again through the mount; the checkpoint is right."""
    from cedanafs.app import capture
    from cedanafs.app.process import DumpRequest, dump_process
    from cedanafs.config import load_settings

    m = mount_factory()
    _configure(m, spool={"dir": str(tiny_tmpfs / "spool")})
    m.mount()
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="64M")
    monkeypatch.setattr(capture, "predicted_size", lambda pid: 1 << 20)
    result = dump_process(load_settings(str(m.config_dir)),
                          DumpRequest(pid=proc.pid, dir=str(m.jobs / "full"), leave_running=True))
    assert result.via == "mount"
    spool_emptied(tiny_tmpfs / "spool")
    proc.kill()
    proc.wait(timeout=30)
    _restore_and_check(m, result.path, state, before, procs, tmp_path)


def test_commit_failing_after_capture_resumes_the_process(mount_factory, monkeypatch, tmp_path, procs,
                                                          tiny_tmpfs):
    """The store fills up while it takes the spool in: the dump fails in one line, nothing is
    committed or left pending, and the process (stopped by CRIU until the commit) runs on."""
    m = mount_factory(store=tiny_tmpfs / "store")
    _configure(m, spool={"dir": str(tmp_path / "spool")}, store={"codec": "none"})
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(m.config_dir))
    m.mount()
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="64M")  # more than the store can hold
    (m.jobs / "j").mkdir()
    r = m.cedana("dump", "process", proc.pid, "--dir", m.jobs / "j")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert os.listdir(m.jobs / "j") == [], "no checkpoint, pending or sealed, is left"
    spool_emptied(tmp_path / "spool")
    wait_for(lambda: _state(proc.pid) in ("S", "R"), what="the stopped process running again")
    state.unlink()
    assert checksum_after_signal(proc.pid, state)["checksum"] == before["checksum"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_gc_running_while_a_dump_reuses_chunks_deletes_none_of_them(spool_mount, tmp_path, procs):
    """The first checkpoint is deleted (its chunks unreferenced, and aged past the grace), the
    second reuses them, and `cedana gc --grace 0` runs in a loop meanwhile: the second
    checkpoint must be complete and restore the same memory."""
    m = spool_mount
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="64M")
    first = _dump(m, proc.pid, "g", tmp_path, "--leave-running")
    r = m.cedana("checkpoint", "delete", f"g/{os.path.basename(first['path'])}", "--store", m.store)
    assert r.returncode == 0, r.stderr
    old = time.time() - 7200
    for path in m.store.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))
    stop = threading.Event()
    runs: list[subprocess.CompletedProcess] = []

    def gc_loop() -> None:
        while not stop.is_set():
            runs.append(m.cedana("gc", "--grace", "0", "--store", m.store))

    collector = threading.Thread(target=gc_loop)
    collector.start()
    try:
        second = _dump(m, proc.pid, "g", tmp_path, "--leave-running")
    finally:
        stop.set()
        collector.join()
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert runs, "GC ran during the dump"
    r = m.cedana("checkpoint", "verify", f"g/{os.path.basename(second['path'])}", "--store", m.store)
    assert r.returncode == 0, r.stdout + r.stderr
    proc.kill()
    proc.wait(timeout=30)
    _restore_and_check(m, second["path"], state, before, procs, tmp_path)


def test_an_ingest_whose_dumper_died_commits_nothing(mount_factory, tmp_path):
    """The dumper (a `cedana dump` or the daemon) waits in user.cedana.ingest until its checkpoint
    is committed, then kills or resumes the process: if it died meanwhile nobody would, so the
    mount commits nothing and leaves the checkpoint pending for the daemon's recovery to discard."""
    from cedanafs.app import mount as mountapp
    from cedanafs.spool import WRITER

    m = mount_factory()
    m.mount()
    (m.jobs / "gone").mkdir()
    ckpt = mountapp.begin_checkpoint(m.jobs / "gone", "c1")
    spool = tmp_path / "spool"
    spool.mkdir()
    for name, size in (("inventory.img", 64), ("pstree.img", 32), ("pages-1.img", 3 << 20)):
        (spool / name).write_bytes(os.urandom(size))
    dead = subprocess.Popen(["true"])
    dead.wait()
    (spool / WRITER).write_text(f"{dead.pid}\n")
    with pytest.raises(OSError):
        os.setxattr(ckpt, "user.cedana.ingest", os.fsencode(spool))
    assert m.state(ckpt) == "pending", "nothing was committed"
    assert "ended before its checkpoint was committed" in mountapp.read_error(str(ckpt))
    mountapp.discard_checkpoint(ckpt)
    assert os.listdir(m.jobs / "gone") == []
