"""Real CRIU, real processes: `cedana dump process` / `cedana restore process` end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_procs import (
    CEDANA, PROGRAMS, checksum_after_signal, pid_alive, read_lines, spool_emptied, wait_for,
)

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(240)]

COMPRESSIONS = ["none", "tar", "gzip", "lz4", "zlib", "zstd"]
SUFFIX = {"none": "", "tar": ".tar", "gzip": ".tar.gz", "lz4": ".tar.lz4", "zlib": ".tar.zlib", "zstd": ".tar.zst"}
MAGIC = {"gzip": b"\x1f\x8b", "lz4": b"\x04\x22\x4d\x18", "zstd": b"\x28\xb5\x2f\xfd", "zlib": b"\x78"}


def dump(cedana, pid: int, ckdir: Path, name: str, *extra: str) -> Path:
    cedana("dump", "process", pid, "--dir", ckdir, "--name", name, *extra, check=True)
    return ckdir


def started_counting(out: Path, at_least: int = 5) -> int:
    return wait_for(lambda: len(read_lines(out)) >= at_least and read_lines(out)[-1], what="counter output")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_detached_restore_continues_counting(compression, tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    started_counting(out)
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--compression", compression,
           check=True)
    path = tmp_path / f"ck{SUFFIX[compression]}"
    assert path.exists(), sorted(os.listdir(tmp_path))
    if compression in MAGIC:
        assert path.read_bytes()[: len(MAGIC[compression])] == MAGIC[compression]
    proc.wait(timeout=10)  # the default dump stops the process
    at_dump = read_lines(out)[-1]
    time.sleep(0.3)
    assert read_lines(out)[-1] == at_dump, "the process kept running after a dump without --leave-running"

    result = cedana("restore", "process", "--path", path, "--pid-file", tmp_path / "pid", check=True)
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    assert pid == proc.pid, result.stdout
    wait_for(lambda: read_lines(out)[-1] >= at_dump + 5, what="restored counter to go on")
    values = read_lines(out)
    assert values == list(range(1, len(values) + 1)), "counter restarted or skipped instead of continuing"
    assert pid_alive(pid)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_no_server_restore_attaches_stdio_and_exit_code(compression, tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out, args=["--stdout", "--limit", "60", "--exit-code", "7"], stdout=subprocess.PIPE)
    started_counting(out, at_least=10)
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "ck", "--compression", compression,
           "--no-server", check=True)
    proc.wait(timeout=10)
    at_dump = read_lines(out)[-1]
    path = tmp_path / f"ck{SUFFIX[compression]}"

    restored = subprocess.run([*CEDANA, "restore", "process", "--path", str(path), "--no-server"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert restored.returncode == 7, restored.stderr
    printed = [int(x) for x in restored.stdout.split()]
    assert printed == list(range(at_dump + 1, 61)), "restored process did not continue on our stdout"
    assert read_lines(out) == list(range(1, 61))


def test_memory_checksum_survives(tmp_path, procs, cedana):
    state = tmp_path / "state.json"
    proc, before = procs.workload(state, size="256M")
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "mem", "--compression", "zstd", check=True)
    proc.wait(timeout=20)
    state.unlink()
    cedana("restore", "process", "--path", tmp_path / "mem.tar.zst", check=True)
    procs.watch(proc.pid)
    after = checksum_after_signal(proc.pid, state)
    assert after["size"] == 256 << 20
    assert after["checksum"] == before["checksum"]


def test_process_tree_with_pipe_and_file_offset(tmp_path, procs, cedana):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(100_000))
    out, state = tmp_path / "tree.out", tmp_path / "tree.json"
    proc = procs.start([sys.executable, str(PROGRAMS / "tree.py"), str(out), str(state), str(data), "4321"])
    started_counting(out)
    os.kill(proc.pid, signal.SIGUSR1)
    first = wait_for(lambda: state.exists() and json.loads(state.read_text()), what="tree state")
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "tree", check=True)
    proc.wait(timeout=10)
    assert not pid_alive(first["child"])
    at_dump = read_lines(out)[-1]
    state.unlink()

    cedana("restore", "process", "--path", tmp_path / "tree", check=True)
    procs.watch(first["parent"])
    procs.watch(first["child"])
    wait_for(lambda: read_lines(out)[-1] >= at_dump + 5, what="the child's numbers through the pipe")
    os.kill(first["parent"], signal.SIGUSR1)
    second = wait_for(lambda: state.exists() and json.loads(state.read_text()), what="tree state")
    assert (second["parent"], second["child"]) == (first["parent"], first["child"])
    assert second["offset"] == 4321
    values = read_lines(out)
    assert values == list(range(1, len(values) + 1))


def test_leave_running_keeps_the_original(tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    started_counting(out)
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "live", "--leave-running",
           "--result-file", tmp_path / "result.json", check=True)
    at_dump = read_lines(out)[-1]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["path"] == str(tmp_path / "live") and result["pid"] == proc.pid
    assert result["size"] == sum(p.stat().st_size for p in (tmp_path / "live").iterdir())
    wait_for(lambda: read_lines(out)[-1] > at_dump + 3, what="the original to keep counting")
    assert proc.poll() is None
    assert (tmp_path / "live" / "inventory.img").exists()
    state = json.loads((tmp_path / "live" / "process_state.json").read_text())
    assert state["pid"] == proc.pid and "counter.py" in " ".join(state["cmdline"])
    assert (tmp_path / "live" / "criu-dump.log").exists()


def test_criu_opts_dump_goes_over_rpc_and_restores(tmp_path, procs, cedana):
    """--criu-opts names CRIU RPC fields: such a dump goes over swrk (the other dumps use the criu
    command line), the field reaches CRIU, and the checkpoint restores."""
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    started_counting(out)
    cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", "rpc", "--criu-opts",
           '{"ghost_limit": 12345678}', check=True)
    proc.wait(timeout=10)
    at_dump = read_lines(out)[-1]
    cedana("restore", "process", "--path", tmp_path / "rpc", "--pid-file", tmp_path / "pid", check=True)
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    wait_for(lambda: read_lines(out)[-1] >= at_dump + 3, what="restored counter to go on")


def test_config_default_dir_and_compression(tmp_path, procs, cedana):
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    started_counting(out)
    env = dict(os.environ, CEDANA_CHECKPOINT_DIR=str(tmp_path), CEDANA_CHECKPOINT_COMPRESSION="lz4")
    result = cedana("dump", "process", proc.pid, "--leave-running", env=env, check=True)
    made = [p for p in tmp_path.iterdir() if p.name.startswith("dump-process-")]
    assert len(made) == 1 and made[0].name.endswith(".tar.lz4"), result.stdout
    assert made[0].read_bytes()[:4] == MAGIC["lz4"]


@pytest.mark.parametrize("spool", ["room", "too small", "off"])
def test_archive_images_through_the_spool_or_beside(spool, tmp_path, procs, cedana):
    """CRIU writes an archive's images into the spool when it holds them, else beside the archive;
    either way only the archive is left, and it restores."""
    out = tmp_path / "count.txt"
    proc = procs.counter(out)
    started_counting(out)
    root = tmp_path / "spool"
    env = dict(os.environ, CEDANA_SPOOL_DIR="" if spool == "off" else str(root),
               CEDANA_SPOOL_SIZE="1" if spool == "too small" else "0")
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    cedana("dump", "process", proc.pid, "--dir", ckdir, "--name", "a", "--compression", "gzip", env=env, check=True)
    proc.wait(timeout=10)
    assert sorted(os.listdir(ckdir)) == ["a.tar.gz"]
    spool_emptied(root)
    at_dump = read_lines(out)[-1]
    cedana("restore", "process", "--path", ckdir / "a.tar.gz", "--pid-file", tmp_path / "pid", check=True)
    pid = int((tmp_path / "pid").read_text())
    procs.watch(pid)
    wait_for(lambda: read_lines(out)[-1] >= at_dump + 3, what="restored counter to go on")
