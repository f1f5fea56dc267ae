"""`cedana dump runc` / `restore runc` against real runc containers with a busybox rootfs: to a
directory and to an archive, the counter going on from where it stopped, files the container
wrote (in its rootfs and in its /dev/shm tmpfs, which the checkpoint carries), its stdout, and
each bad input in one line with the container still running or the checkpoint intact.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_containers import COUNTER, wait_counting
from tests.fixtures_procs import CEDANA, ROOT, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(240)]

NOTE = "written before the checkpoint"
SCRIPT = f"echo '{NOTE}' > /dev/shm/note; echo started > /data/started; {COUNTER}"


def cedana(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CEDANA, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT), stdin=subprocess.DEVNULL)


def ok(*args) -> str:
    result = cedana(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    return err


def digest(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path) if path.is_dir() else p.name): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


def log_numbers(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split() if x.isdigit()] if log.exists() else []


def assert_continues(before: list[int], after: list[int]) -> None:
    """What the container printed after restore carries on from what it printed up to the dump:
    consecutive, no restart from 1. A value still in the pipe at the dump may be printed twice
    (CRIU copies a pipe's buffered data without consuming it)."""
    assert before and after, (before[-3:], after[:3])
    assert after == list(range(after[0], after[0] + len(after))), after
    assert before[-1] - 3 <= after[0] <= before[-1] + 1, (before[-3:], after[:3])


def split_at_restore(numbers: list[int]) -> tuple[list[int], list[int]]:
    """One log across a dump and restore: (up to the dump, after the restore)."""
    k = next((i for i in range(1, len(numbers)) if numbers[i] <= numbers[i - 1]), len(numbers))
    return numbers[:k], numbers[k:]


def assert_one_run(numbers: list[int], printed_at_dump: int) -> list[int]:
    """A log across a dump and restore counts 1, 2, ... once (a few values maybe twice at the restore)."""
    before, after = split_at_restore(numbers)
    assert before == list(range(1, len(before) + 1)), before
    if after:
        assert_continues(before, after)
    assert max(numbers) > printed_at_dump + 3
    return after


def assert_resumed(runc_env, cid: str, bundle: Path, before_log: Path, after_log: Path) -> list[int]:
    """The restored container prints on from where it stopped, into `after_log`; its files are there."""
    assert runc_env.status(cid) == "running"
    after = wait_for(lambda: (n := log_numbers(after_log)) and len(n) > 3 and n, what="the restored output")
    assert_continues(log_numbers(before_log), after)
    wait_counting(bundle, above=after[0])  # its rootfs file, rewritten by the restored counter
    pid = runc_env.state(cid)["pid"]
    assert Path(f"/proc/{pid}/root/dev/shm/note").read_text().strip() == NOTE  # tmpfs: from the checkpoint
    assert (bundle / "rootfs" / "data" / "started").read_text().strip() == "started"
    return after


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_dump_and_restore_runc(runc_env, tmp_path, compression):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("ctr1", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=5)

    out = ok("dump", "runc", "ctr1", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1",
             "--compression", compression)
    ckpt = tmp_path / ("c1" if compression == "none" else "c1.tar.gz")
    assert str(ckpt) in out and ckpt.exists()
    assert runc_env.status("ctr1") is None  # runc stopped and removed it after the checkpoint
    if compression == "none":
        assert {"inventory.img", "container.json", "process_state.json", "descriptors.json"} <= \
            {p.name for p in ckpt.iterdir()}
    before = digest(ckpt)

    after_log = tmp_path / "after.log"
    out = ok("restore", "runc", "--path", ckpt, "--bundle", bundle, "--id", "ctr1", "--root", runc_env.root,
             "--detach", "--out", after_log)
    assert "Restored runc container ctr1" in out
    assert_resumed(runc_env, "ctr1", bundle, tmp_path / "before.log", after_log)
    assert digest(ckpt) == before  # the restore left the checkpoint as it was


def test_restore_under_another_id_and_leave_running(runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("orig", bundle, tmp_path / "orig.log")
    wait_counting(bundle, above=3)
    ok("dump", "runc", "orig", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1", "--leave-running")
    assert runc_env.status("orig") == "running"

    # The same id is in use: one line, the running container untouched, the checkpoint intact.
    before = digest(tmp_path / "c1")
    err = one_line_error(cedana("restore", "runc", "--path", tmp_path / "c1", "--root", runc_env.root,
                                "--detach", "--out", tmp_path / "x.log"), 4, "orig", "already exists")
    assert "Traceback" not in err
    assert runc_env.status("orig") == "running" and digest(tmp_path / "c1") == before

    runc_env.runc("kill", "orig", "KILL")
    wait_for(lambda: runc_env.status("orig") == "stopped", what="orig to stop")
    runc_env.runc("delete", "orig")
    frozen_log = tmp_path / "copy.log"
    ok("restore", "runc", "--path", tmp_path / "c1", "--id", "copy", "--root", runc_env.root, "--detach",
       "--out", frozen_log)
    assert runc_env.status("copy") == "running"
    wait_for(lambda: len(log_numbers(frozen_log)) > 2, what="the copy to count")


def test_runc_bad_inputs_are_one_line(runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    other = runc_env.bundle("other", "sleep 1000")
    root = runc_env.root

    one_line_error(cedana("dump", "runc", "nosuch", "--root", root, "--dir", tmp_path), 3, "nosuch")
    assert list(tmp_path.iterdir()) == []

    runc_env.start("paused", bundle, tmp_path / "p.log")
    wait_counting(bundle, above=2)
    runc_env.runc("pause", "paused")
    one_line_error(cedana("dump", "runc", "paused", "--root", root, "--dir", tmp_path / "d"), 2, "not running")
    assert runc_env.status("paused") == "paused"
    runc_env.runc("resume", "paused")

    (tmp_path / "d").mkdir()
    ok("dump", "runc", "paused", "--root", root, "--dir", tmp_path / "d", "--name", "c1")
    ckpt = tmp_path / "d" / "c1"
    before = digest(ckpt)

    one_line_error(cedana("restore", "runc", "--path", ckpt, "--bundle", other, "--id", "mism", "--root", root,
                          "--detach", "--out", tmp_path / "m.log"), 2, "does not match")
    assert runc_env.status("mism") is None and digest(ckpt) == before

    one_line_error(cedana("restore", "runc", "--path", tmp_path / "nothing", "--root", root, "--detach"), 3,
                   "does not exist")
    one_line_error(cedana("restore", "runc", "--path", tmp_path / "d", "--root", root, "--detach"), 5)

    # A failed CRIU dump (a file outside the container's mounts on stdout) leaves it running, nothing written.
    with open(tmp_path / "direct.log", "w") as direct:
        subprocess.run(["runc", "--root", str(root), "run", "-d", "--bundle", str(other), "direct"],
                       stdin=subprocess.DEVNULL, stdout=direct, stderr=direct, check=True)
    one_line_error(cedana("dump", "runc", "direct", "--root", root, "--dir", tmp_path / "d", "--name", "c2"), 6,
                   "runc checkpoint of direct failed")
    assert runc_env.status("direct") == "running"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["c1"]


def test_attached_restore_passes_output_and_exit_code(runc_env, tmp_path):
    script = 'i=0; while [ "$i" -lt 40 ]; do i=$((i+1)); echo "$i" > /data/count; echo "$i"; sleep 0.1; done; exit 7'
    bundle = runc_env.bundle("bundle", script)
    runc_env.start("att", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=5)
    ok("dump", "runc", "att", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1")

    result = cedana("restore", "runc", "--path", tmp_path / "c1", "--root", runc_env.root)
    assert result.returncode == 7, result.stderr  # the container's own exit code
    printed = [int(x) for x in result.stdout.split() if x.isdigit()]
    before = log_numbers(tmp_path / "before.log")
    assert before[-1] < 40 and printed[-1] == 40
    assert_continues(before, printed)  # its stdout, from where it stopped


def test_attached_restore_that_fails_is_one_line(runc_env, tmp_path):
    bundle = runc_env.bundle("bundle", SCRIPT)
    runc_env.start("held", bundle, tmp_path / "before.log")
    wait_counting(bundle, above=2)
    ok("dump", "runc", "held", "--root", runc_env.root, "--dir", tmp_path, "--name", "c1", "--leave-running")
    runc_env.runc("kill", "held", "KILL")
    wait_for(lambda: runc_env.status("held") == "stopped", what="held to stop")
    runc_env.runc("delete", "held")
    (tmp_path / "c1" / "pstree.img").unlink()  # the checkpoint's process tree is gone
    result = cedana("restore", "runc", "--path", tmp_path / "c1", "--root", runc_env.root, timeout=60)
    # Attached, runc's stderr is the container's (and ours): runc's own words may come first.
    assert result.returncode == 6 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: runc restore of held failed"), result.stderr
    assert runc_env.ids() == []
