"""Bad input to dump/restore: one clear line, a non-zero exit, and nothing lost."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.fixtures_procs import CEDANA, ROOT, pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(180)]


def assert_one_line_error(result, *needles: str, code: int | None = None) -> None:
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {result.stderr!r}"
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("Error: ")
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def running_counter(tmp_path, procs):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
    return proc, out


def still_counting(out: Path) -> bool:
    before = read_lines(out)[-1]
    return bool(wait_for(lambda: read_lines(out)[-1] > before, timeout=5, what="process to keep running"))


def test_no_such_pid(cedana, tmp_path):
    assert_one_line_error(cedana("dump", "process", 4_000_000, "--dir", tmp_path), "no such process")


@pytest.mark.parametrize("pid,needle", [(1, "init"), (2, "kernel thread")])
def test_init_and_kernel_threads_refused(cedana, tmp_path, pid, needle):
    assert_one_line_error(cedana("dump", "process", pid, "--dir", tmp_path), needle)
    assert list(tmp_path.iterdir()) == []


def test_not_root(tmp_path, running_counter):
    proc, out = running_counter
    # The interpreter's own files may be unreadable to nobody: import first, then drop privileges.
    code = ("import os, sys, difflib; from cedanafs.cli import load_commands, main; import cedanafs.app.process;"
            "load_commands();"
            "os.setegid(65534); os.seteuid(65534); sys.argv = ['cedana'] + sys.argv[1:]; main()")
    result = subprocess.run([sys.executable, "-c", code, "dump", "process", str(proc.pid), "--dir", "/tmp"],
                            capture_output=True, text=True, timeout=60, cwd=str(ROOT),
                            env=dict(os.environ, CEDANA_CONFIG_DIR="/nonexistent"))
    assert_one_line_error(result, "root", code=77)
    assert still_counting(out)


def test_dir_missing_or_not_writable(cedana, tmp_path, running_counter):
    proc, out = running_counter
    assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", tmp_path / "nope"), "does not exist")
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", tmp_path / "afile"), "not a directory")
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", ro), "not writable")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert still_counting(out)


@pytest.mark.parametrize("compression,suffix", [("none", ""), ("gzip", ".tar.gz")])
def test_existing_name_is_refused(cedana, tmp_path, running_counter, compression, suffix):
    proc, out = running_counter
    existing = tmp_path / f"taken{suffix}"
    if suffix:
        existing.write_bytes(b"precious")
    else:
        existing.mkdir()
        (existing / "keep").write_text("precious")
    result = cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "taken", "--compression", compression)
    assert_one_line_error(result, "already exists")
    assert (existing.read_bytes() if suffix else (existing / "keep").read_bytes()) == b"precious"
    assert still_counting(out)


def test_unknown_compression(cedana, tmp_path, running_counter):
    proc, out = running_counter
    assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", tmp_path, "--compression", "rar"),
                          "compression", code=2)
    assert list(p.name for p in tmp_path.iterdir()) == ["count.txt"]


def test_failed_dump_leaves_process_running_and_nothing_behind(cedana, tmp_path, procs):
    # A unix socket connected to a peer outside the tree makes CRIU refuse the dump.
    out = tmp_path / "count.txt"
    ours, theirs = socket.socketpair()
    code = (f"import socket, time; s = socket.socket(fileno={theirs.fileno()});"
            f"f = open({str(out)!r}, 'a'); i = 0\n"
            "while True:\n i += 1; f.write(f'{i}\\n'); f.flush(); time.sleep(0.05)")
    proc = procs.start([sys.executable, "-c", code], pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
        ckdir = tmp_path / "ck"
        ckdir.mkdir()
        result = cedana("dump", "process", proc.pid, "--dir", ckdir, "--name", "bad", "--compression", "gzip")
        assert_one_line_error(result, "criu dump", code=6)
        assert list(ckdir.iterdir()) == [], "a failed dump left files behind"
        assert pid_alive(proc.pid) and still_counting(out)
    finally:
        ours.close()


def test_restore_missing_path(cedana, tmp_path):
    assert_one_line_error(cedana("restore", "process", "--path", tmp_path / "nothing.tar.gz"), "does not exist")


def test_restore_dir_without_images(cedana, tmp_path):
    assert_one_line_error(cedana("restore", "process", "--path", tmp_path), "no inventory.img")


@pytest.fixture
def good_archive(tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter")
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--compression", "gzip", check=True)
    proc.wait(timeout=10)
    return tmp_path / "ck.tar.gz"


def test_truncated_and_corrupt_archives(cedana, tmp_path, good_archive):
    data = good_archive.read_bytes()
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(cedana("restore", "process", "--path", truncated), "truncated or corrupt", code=5)
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(data[:10] + os.urandom(len(data) - 10))
    assert_one_line_error(cedana("restore", "process", "--path", corrupt), "corrupt", code=5)
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(cedana("restore", "process", "--path", junk), "not a checkpoint archive", code=5)
    assert good_archive.read_bytes() == data


def _tar_with(member: tarfile.TarInfo, payload: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        inv = tarfile.TarInfo("inventory.img")
        inv.size = 4
        tar.addfile(inv, io.BytesIO(b"\0\0\0\0"))
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-out", "hardlink-out"])
def test_archive_members_cannot_escape(cedana, tmp_path, kind):
    victim = tmp_path / "victim"
    member = tarfile.TarInfo({"dotdot": "../victim", "absolute": str(victim)}.get(kind, "link"))
    if kind == "symlink-out":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink-out":
        member.type, member.linkname = tarfile.LNKTYPE, "../../etc/passwd"
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_with(member, b"owned"))
    result = cedana("restore", "process", "--path", archive)
    assert_one_line_error(result, "unsafe", code=5)
    assert not victim.exists()


def test_restore_while_original_pid_in_use(cedana, tmp_path, running_counter):
    proc, out = running_counter
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--leave-running", check=True)
    before = sorted(p.name for p in (tmp_path / "ck").iterdir())
    result = cedana("restore", "process", "--path", tmp_path / "ck")
    assert_one_line_error(result, f"PID {proc.pid} is in use", code=4)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == before
    assert still_counting(out)


def test_bad_criu_opts(cedana, tmp_path, running_counter):
    proc, out = running_counter
    assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", tmp_path, "--criu-opts", "{bad"), "json")
    assert_one_line_error(cedana("dump", "process", proc.pid, "--dir", tmp_path, "--criu-opts", '{"nope": 1}'),
                          "unknown CRIU option")
    assert still_counting(out)
