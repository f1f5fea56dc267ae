"""`cedana dump process --dir MOUNT/jobs/J` writes straight into the mount; restore from there, eager and lazy."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from tests.fixtures_procs import checksum_after_signal, pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]


def _dump_into_mount(mounted, pid: int, job: str, *extra: str) -> str:
    r = mounted.cedana("dump", "process", pid, "--dir", mounted.jobs / job, *extra)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip().rsplit(" ", 1)[-1]
    assert os.path.dirname(path) == str(mounted.jobs / job)
    return path


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_dump_into_mount_and_restore(lazy, mounted, tmp_path, procs):
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="96M")
    ckpt = _dump_into_mount(mounted, proc.pid, "wl")
    proc.wait(timeout=20)
    assert mounted.state(ckpt) == "sealed"
    assert os.readlink(mounted.jobs / "wl" / "latest") == os.path.basename(ckpt)
    names = set(os.listdir(ckpt))
    assert {"inventory.img", "pstree.img", "process_state.json", "criu-dump.log"} <= names
    assert not any(n.endswith((".tar", ".gz", ".zst", ".lz4")) for n in names), "no archive inside the mount"
    with pytest.raises(OSError):
        open(os.path.join(ckpt, "inventory.img"), "ab").close()  # sealed: read-only

    state.unlink()
    args = ["restore", "process", "--path", ckpt, "--pid-file", tmp_path / "pid"] + (["--lazy"] if lazy else [])
    r = mounted.cedana(*args)
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    assert pid == proc.pid
    after = checksum_after_signal(pid, state, timeout=120)
    assert after["checksum"] == before["checksum"]
    assert pid_alive(pid)


def test_two_dumps_of_one_job_and_failed_dump_leaves_nothing(mounted, tmp_path, procs):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
    first = _dump_into_mount(mounted, proc.pid, "cnt", "--leave-running")
    second = _dump_into_mount(mounted, proc.pid, "cnt", "--leave-running")
    assert first != second and sorted([first, second]) == [first, second], "ids sort by time"
    assert os.readlink(mounted.jobs / "cnt" / "latest") == os.path.basename(second)

    # CRIU refuses a process holding a unix socket whose peer is outside the tree: the pending
    # checkpoint dir it had started to fill is discarded and the process keeps running.
    ours, theirs = socket.socketpair()
    code = (f"import socket, time; s = socket.socket(fileno={theirs.fileno()});"
            f"f = open({str(out)!r}, 'a')\n"
            "while True:\n f.write('1\\n'); f.flush(); time.sleep(0.05)")
    holder = procs.start([sys.executable, "-c", code], pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        listing = sorted(os.listdir(mounted.jobs / "cnt"))
        r = mounted.cedana("dump", "process", holder.pid, "--dir", mounted.jobs / "cnt")
        assert r.returncode == 6 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert sorted(os.listdir(mounted.jobs / "cnt")) == listing
        assert pid_alive(holder.pid) and pid_alive(proc.pid)
    finally:
        ours.close()


def _pages_chunk_file(mounted, ckpt: str) -> tuple[str, Path]:
    """A chunk of the checkpoint's pages image: (digest, its file in the local store)."""
    from cedanafs.catalog.manifest import decode_manifest

    job, name = Path(ckpt).parent.name, Path(ckpt).name
    [manifest] = (mounted.store / "manifests" / job / name).glob("*.json")
    pages = decode_manifest(manifest.read_bytes()).file("pages-1.img")
    ref = pages.content.chunks[len(pages.content.chunks) // 2]
    [path] = mounted.store.glob(f"chunks-*/{ref.digest[:2]}/{ref.digest}")
    return ref.digest, path


def test_eager_restore_of_a_corrupt_chunk_runs_nothing(mounted, tmp_path, procs):
    """The images stream to CRIU as they are read: a chunk that fails verification stops the
    restore before the process runs, and the error names the chunk."""
    state = tmp_path / "state.json"
    proc, _ = procs.workload(state, size="32M")
    ckpt = _dump_into_mount(mounted, proc.pid, "bad")
    proc.wait(timeout=20)
    digest, path = _pages_chunk_file(mounted, ckpt)
    stored = path.read_bytes()
    path.write_bytes(stored[:1] + bytes(len(stored) - 1))  # the same codec byte, a wrong body

    r = mounted.cedana("restore", "process", "--path", ckpt, "--pid-file", tmp_path / "pid")
    assert r.returncode != 0, "a restore from a corrupt chunk succeeded"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert digest[:12] in lines[0] and "nothing was restored" in lines[0], lines[0]
    assert not (tmp_path / "pid").exists()
    assert not pid_alive(proc.pid), "a process runs from a corrupt checkpoint"


def test_lazy_restore_that_reaches_the_daemon_too_early_runs_again(mounted, tmp_path, procs, monkeypatch):
    """The lazy restore starts beside the lazy-pages daemon; one that tries to connect before the
    daemon listens (here the daemon starts a second late) fails before making any process and is
    run again once the daemon is ready: the process comes back once, its memory intact."""
    from cedanafs.criu import find_criu

    calls = tmp_path / "calls"
    wrapper = tmp_path / "criu"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {calls}\n[ "$1" = lazy-pages ] && sleep 1\n'
                       f'exec {find_criu("")} "$@"\n')
    wrapper.chmod(0o755)
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="32M")
    ckpt = _dump_into_mount(mounted, proc.pid, "late")
    proc.wait(timeout=20)
    state.unlink()
    calls.unlink(missing_ok=True)
    monkeypatch.setenv("CEDANA_CRIU_BINARY_PATH", str(wrapper))
    r = mounted.cedana("restore", "process", "--path", ckpt, "--pid-file", tmp_path / "pid", "--lazy")
    assert r.returncode == 0, r.stderr
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    assert calls.read_text().split().count("restore") == 2, calls.read_text()
    after = checksum_after_signal(pid, state, timeout=120)
    assert after["checksum"] == before["checksum"]
