"""A corrupt checkpoint archive is refused before anything runs: one line, non-zero exit, no process."""

from __future__ import annotations

import os
import signal

import pytest

from cedanafs.app import archive
from tests.fixtures_procs import pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

FORMATS = ["tar", "gzip", "lz4", "zlib", "zstd"]


@pytest.fixture
def dumped(tmp_path, procs, cedana):
    """A real counter dumped (and so stopped) as a plain images dir, and the pid it had."""
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter output")
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--compression", "none",
           "--no-server", check=True)
    proc.wait(timeout=10)
    return tmp_path / "ck", proc.pid, out


def test_each_format_with_a_flipped_byte_is_refused(dumped, tmp_path, cedana):
    images, pid, out = dumped
    at_dump = read_lines(out)[-1]
    for fmt in FORMATS:
        path = tmp_path / archive.archive_name("bad", fmt)
        with open(path, "wb") as f:
            archive.write_archive(str(images), f, fmt)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        result = cedana("restore", "process", "--path", path, "--no-server", timeout=120)
        assert result.returncode != 0, f"{fmt}: a corrupt archive restored"
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: corrupt archive: "), f"{fmt}: {result.stderr}"
        assert not pid_alive(pid), f"{fmt}: a process was started from a corrupt archive"
    assert read_lines(out)[-1] == at_dump, "the dumped counter ran again from a corrupt archive"
    # The same images, intact, still restore: the refusals were about the flipped byte only.
    good = tmp_path / "good.tar.zst"
    with open(good, "wb") as f:
        archive.write_archive(str(images), f, "zstd")
    result = cedana("restore", "process", "--path", good, "--pid-file", tmp_path / "pid", timeout=120)
    assert result.returncode == 0, result.stderr
    restored = int((tmp_path / "pid").read_text())
    try:
        wait_for(lambda: read_lines(out)[-1] > at_dump, what="restored counter to go on")
    finally:
        os.kill(restored, signal.SIGKILL)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_dump_records_the_digest_of_every_image(compression, tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    wait_for(lambda: len(read_lines(out)) >= 3, what="counter output")
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--compression", compression,
           "--leave-running", "--no-server", check=True)
    path = tmp_path / archive.archive_name("ck", compression)
    with open(path, "rb") as src, archive.open_tar_stream(src, str(path)) as tar:
        names, sums = [], ""
        for member in tar:
            if member.name == archive.SUMS_NAME:
                sums = tar.extractfile(member).read().decode()
            else:
                names.append(member.name)
    listed = sorted(line.split("  ", 1)[1] for line in sums.splitlines())
    assert listed == sorted(names) and "inventory.img" in listed
