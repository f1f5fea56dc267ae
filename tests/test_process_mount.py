"""`cedana dump process --dir MOUNT/jobs/J` writes straight into the mount; restore from there, eager and lazy."""

from __future__ import annotations

import os
import socket
import sys

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
