"""Integration tier: a real `cedana mount`, real CRIU, real cp and rsync.

Processes are started in their own session (CRIU needs --shell-job for them) and killed at
teardown, restored ones included; every mount is unmounted (lazily if busy) even on failure.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_mount import is_mounted, until
from tests.fixtures_procs import checksum_after_signal, pid_alive

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(300)]

CRIU = shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin") or "criu"


def criu(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CRIU, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def criu_dump(pid: int, images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    r = criu("dump", "-t", pid, "-D", images, "--shell-job", "-o", "dump.log", "-v4")
    assert r.returncode == 0, f"criu dump failed: {(images / 'dump.log').read_text()[-2000:]}"


def criu_restore(images: Path, work: Path, procs, pid: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    procs.watch(pid)  # the restored process has its old pid: kill it at teardown
    r = criu("restore", "-D", images, "-W", work, "-d", "--shell-job", "-o", "restore.log", "-v4")
    assert r.returncode == 0, f"criu restore failed: {(work / 'restore.log').read_text()[-2000:]}"


def same_memory(pid: int, state: Path, expected: str) -> None:
    fresh = checksum_after_signal(pid, state)
    assert fresh["pid"] == pid
    assert fresh["checksum"] == expected


def dumped_workload(procs, tmp_path: Path, images: Path, size: str = "32M", name: str = "w") -> tuple[int, Path, str]:
    state = tmp_path / f"{name}.json"
    proc, info = procs.workload(state, size=size)
    criu_dump(info["pid"], images)
    until(lambda: not pid_alive(info["pid"]), timeout=30, what="dumped process to exit")
    proc.wait(timeout=10)
    return info["pid"], state, info["checksum"]


def kill_and_reap(pid: int) -> None:
    """Kill a restored process and wait until its pid is free again (the next restore reuses it)."""
    os.kill(pid, signal.SIGKILL)
    until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30, what=f"pid {pid} to be reaped")


def read_tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


# --- the CLI ----------------------------------------------------------------------------------

def test_mount_shows_as_fuse_cedanafs_and_umount_is_clean(mounted):
    line = next(ln for ln in open("/proc/self/mountinfo") if ln.split()[4] == str(mounted.mountpoint))
    assert " - fuse.cedanafs cedanafs " in line
    assert sorted(os.listdir(mounted.mountpoint)) == ["jobs"]
    pid = mounted.server_pid()
    mounted.umount()
    assert not is_mounted(mounted.mountpoint)
    until(lambda: not pid_alive(pid), timeout=10, what="mount server to exit")


def test_mount_and_umount_errors_are_one_line(mount_factory, tmp_path):
    m = mount_factory()
    r = m.cedana("mount", tmp_path / "missing")
    assert r.returncode != 0 and r.stderr.count("\n") == 1
    assert "does not exist" in r.stderr
    busy = tmp_path / "full"
    busy.mkdir()
    (busy / "x").write_text("x")
    r = m.cedana("mount", busy)
    assert r.returncode != 0 and "not empty" in r.stderr and r.stderr.count("\n") == 1
    r = m.cedana("umount", busy)
    assert r.returncode != 0 and "not a cedanafs mount" in r.stderr and r.stderr.count("\n") == 1
    r = m.cedana("mount", m.mountpoint, "--store", "nosuchscheme://x")
    assert r.returncode != 0 and r.stderr.count("\n") == 1
    assert not is_mounted(m.mountpoint)

    m.mount()
    r = m.cedana("mount", m.mountpoint)
    assert r.returncode != 0 and "already a cedanafs mount" in r.stderr
    holder = subprocess.Popen(["sleep", "60"], cwd=m.jobs, start_new_session=True)
    try:
        r = m.cedana("umount", m.mountpoint)
        assert r.returncode != 0 and "busy" in r.stderr and r.stderr.count("\n") == 1
        assert is_mounted(m.mountpoint)
        r = m.cedana("umount", "--lazy", m.mountpoint)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.mountpoint)
    finally:
        holder.kill()
        holder.wait()


# --- CRIU straight into the mount ---------------------------------------------------------------

def test_dump_into_mount_restore_eager_lazy_and_from_a_copy(mounted, procs, tmp_path):
    ckpt = mounted.jobs / "train" / "c1"
    (mounted.jobs / "train").mkdir()
    ckpt.mkdir()
    os.setxattr(ckpt, "user.cedana.autoseal", b"0")  # this writer seals explicitly
    pid, state, checksum = dumped_workload(procs, tmp_path, ckpt, size="64M")
    assert mounted.state(ckpt) == "pending"
    assert not (mounted.jobs / "train" / "latest").exists()  # never latest before it is sealed
    r = mounted.cedana("checkpoint", "seal", ckpt)
    assert r.returncode == 0, r.stderr
    assert mounted.state(ckpt) == "sealed"
    assert os.readlink(mounted.jobs / "train" / "latest") == "c1"

    # Eagerly, straight from the mount.
    criu_restore(ckpt, tmp_path / "work-eager", procs, pid)
    same_memory(pid, state, checksum)
    kill_and_reap(pid)

    # Lazily: criu lazy-pages serves the pages from the mounted images.
    from cedanafs.app.mount import lazy_restore

    restored = lazy_restore(mounted.jobs / "train" / "latest", tmp_path / "work-lazy")
    assert restored.pid == pid
    procs.watch(pid)
    same_memory(pid, state, checksum)
    assert restored.wait_complete(timeout=60) == 0
    assert not (tmp_path / "work-lazy").exists()  # removed once every page was served
    kill_and_reap(pid)

    # cp -r out gives byte-identical files that plain criu restores.
    copy = tmp_path / "copy"
    assert subprocess.run(["cp", "-r", ckpt, copy]).returncode == 0
    assert read_tree(copy) == read_tree(ckpt)
    criu_restore(copy, tmp_path / "work-copy", procs, pid)
    same_memory(pid, state, checksum)


def test_cedana_dump_process_into_mount(mounted, procs, tmp_path, monkeypatch):
    """`cedana dump process PID --dir MOUNT/jobs/J` (the process engineer's command) lands sealed."""
    state = tmp_path / "w.json"
    proc, info = procs.workload(state, size="16M")
    job = mounted.jobs / "cli-job"
    job.mkdir()
    r = mounted.cedana("dump", "process", info["pid"], "--dir", job)
    assert r.returncode == 0, r.stderr
    until(lambda: (job / "latest").exists(), timeout=30, what="a sealed checkpoint under cli-job")
    ckpt = job / os.readlink(job / "latest")
    assert mounted.state(ckpt) == "sealed"
    assert (ckpt / "inventory.img").exists() and (ckpt / "process_state.json").exists()
    proc.wait(timeout=30)
    procs.watch(info["pid"])
    r = mounted.cedana("restore", "process", "--path", job / "latest")
    assert r.returncode == 0, r.stderr
    same_memory(info["pid"], state, info["checksum"])
    kill_and_reap(info["pid"])
    r = mounted.cedana("restore", "process", "--path", job / "latest", "--lazy")
    assert r.returncode == 0, r.stderr
    same_memory(info["pid"], state, info["checksum"])


def test_second_mount_of_the_same_store_sees_commits(mount_factory):
    """Two mounts with their own catalog databases and caches stand in for two machines."""
    a = mount_factory("a")
    b = mount_factory("b", store=a.store)
    a.mount()
    b.mount()
    ckpt = a.jobs / "moved" / "c1"
    ckpt.parent.mkdir()
    ckpt.mkdir()
    files = {"inventory.img": b"inv", "pages-1.img": os.urandom(3 << 20)}
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    assert not (b.jobs / "moved").exists()  # pending on a: invisible elsewhere
    a.seal(ckpt)
    other = b.jobs / "moved" / "c1"
    until(lambda: other.exists(), timeout=15, what="the commit to show on the second mount")
    assert read_tree(other) == files
    assert os.readlink(b.jobs / "moved" / "latest") == "c1"
    assert [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(other.iterdir())] == \
        [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(ckpt.iterdir())]
    # A delete on one machine disappears from the other too.
    assert subprocess.run(["rm", "-r", str(ckpt)]).returncode == 0
    until(lambda: not other.exists(), timeout=15, what="the delete to show on the second mount")


# --- imports with rsync -----------------------------------------------------------------------

def test_rsync_import_twice_and_checksum_out(mounted, procs, tmp_path):
    src = tmp_path / "images"
    pid, state, checksum = dumped_workload(procs, tmp_path, src)
    (mounted.jobs / "imported").mkdir()
    dest = mounted.jobs / "imported" / "c1"
    r = subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    until(lambda: mounted.state(dest) == "sealed", timeout=30, what="the import to be auto-sealed")
    assert os.readlink(mounted.jobs / "imported" / "latest") == "c1"

    def transferred(*args: str) -> int:
        r = subprocess.run(["rsync", *args, "--stats"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return int(re.search(r"Number of regular files transferred: (\d+)", r.stdout).group(1))

    assert transferred("-a", f"{src}/", f"{dest}/") == 0
    assert transferred("-a", "--checksum", f"{dest}/", f"{src}/") == 0
    # Attributes are stable across a remount too.
    mounted.umount()
    mounted.mount()
    assert transferred("-a", f"{src}/", f"{dest}/") == 0
    criu_restore(dest, tmp_path / "work", procs, pid)
    same_memory(pid, state, checksum)


# --- concurrency ------------------------------------------------------------------------------

def test_two_dumps_at_once_while_reading_another_checkpoint(mounted, procs, tmp_path):
    # A sealed checkpoint to read from while the dumps run.
    reference = {f"f{i}": os.urandom(3 << 20) for i in range(3)}
    reference["inventory.img"] = b"not really CRIU"
    base = mounted.jobs / "ref" / "c1"
    base.parent.mkdir()
    base.mkdir()
    for name, data in reference.items():
        (base / name).write_bytes(data)
    mounted.seal(base)

    workloads = {}
    for job in ("a", "b"):
        state = tmp_path / f"{job}.json"
        proc, info = procs.workload(state, size="48M")
        workloads[job] = (proc, state, info["checksum"])
        (mounted.jobs / job).mkdir()
        (mounted.jobs / job / "c1").mkdir()
        os.setxattr(mounted.jobs / job / "c1", "user.cedana.autoseal", b"0")
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]

    def dump(job):
        try:
            criu_dump(workloads[job][0].pid, mounted.jobs / job / "c1")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read_loop():
        try:
            while not stop.is_set():
                for name, data in reference.items():
                    assert (base / name).read_bytes() == data
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=dump, args=(j,)) for j in workloads] + [threading.Thread(target=read_loop)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(timeout=200)
    stop.set()
    threads[2].join(timeout=30)
    assert not errors, errors
    assert reads[0] > 0
    for job, (proc, state, checksum) in workloads.items():
        ckpt, pid = mounted.jobs / job / "c1", proc.pid
        mounted.seal(ckpt)
        proc.wait(timeout=30)  # reaped: its pid is free for the restore
        criu_restore(ckpt, tmp_path / f"work-{job}", procs, pid)
        same_memory(pid, state, checksum)


# --- crashes ------------------------------------------------------------------------------------

def test_mount_killed_mid_dump(mounted, procs, tmp_path):
    keep = mounted.jobs / "keep" / "c1"
    keep.parent.mkdir()
    keep.mkdir()
    kept = {"inventory.img": b"inv", "pages-1.img": os.urandom(2 << 20)}
    for name, data in kept.items():
        (keep / name).write_bytes(data)
    mounted.seal(keep)

    state = tmp_path / "w.json"
    _, info = procs.workload(state, size="512M")
    pid = info["pid"]
    ckpt = mounted.jobs / "crash" / "c1"
    ckpt.parent.mkdir()
    ckpt.mkdir()
    dump = subprocess.Popen([CRIU, "dump", "-t", str(pid), "-D", str(ckpt), "--shell-job", "-o", "dump.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        until(lambda: (ckpt / "pages-1.img").exists() and (ckpt / "pages-1.img").stat().st_size > (16 << 20),
              timeout=120, interval=0.01, what="the dump to be under way")
        os.kill(mounted.server_pid(), signal.SIGKILL)
        assert dump.wait(timeout=120) != 0  # CRIU could not finish ...
    finally:
        if dump.poll() is None:
            dump.kill()
    assert pid_alive(pid)  # ... so it resumed the process
    same_memory(pid, state, info["checksum"])

    r = mounted.cedana("umount", mounted.mountpoint)  # a dead mount can still be unmounted
    assert r.returncode == 0, r.stderr
    mounted.mount()
    assert "crash" not in os.listdir(mounted.jobs)
    r = mounted.cedana("checkpoint", "list", "--output", "json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    names = {f"{c['job']}/{c['id']}" for c in listed} if isinstance(listed, list) else set()
    assert names == {"keep/c1"}
    for name in names:
        r = mounted.cedana("checkpoint", "verify", name)
        assert r.returncode == 0, r.stderr
    assert read_tree(keep) == kept


# --- bad input ----------------------------------------------------------------------------------

def test_sealed_checkpoint_refuses_writes_but_rm_r_works(mounted):
    ckpt = mounted.jobs / "j" / "c1"
    ckpt.parent.mkdir()
    ckpt.mkdir()
    (ckpt / "inventory.img").write_bytes(b"inv")
    (ckpt / "pages-1.img").write_bytes(os.urandom(100_000))
    mounted.seal(ckpt)
    for attempt in (lambda: (ckpt / "new").write_bytes(b"x"),
                    lambda: (ckpt / "inventory.img").write_bytes(b"x"),
                    lambda: os.chmod(ckpt / "inventory.img", 0o777),
                    lambda: os.rename(ckpt / "inventory.img", ckpt / "x"),
                    lambda: os.truncate(ckpt / "pages-1.img", 0)):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno in (30, 1)  # EROFS or EPERM
    r = subprocess.run(["cp", "/etc/hostname", str(ckpt / "hostname")], capture_output=True, text=True)
    assert r.returncode != 0 and "Read-only file system" in r.stderr
    assert subprocess.run(["rm", "-r", str(ckpt)]).returncode == 0
    assert not ckpt.exists()
    r = mounted.cedana("checkpoint", "list", "--output", "json")
    assert "c1" not in r.stdout


def test_directory_without_criu_images_is_never_sealed(mounted):
    ckpt = mounted.jobs / "j" / "junk"
    ckpt.parent.mkdir()
    ckpt.mkdir()
    (ckpt / "notes.txt").write_text("no images here")
    time.sleep(mounted.autoseal_after + 1.5)
    assert mounted.state(ckpt) == "pending"
    assert not (ckpt.parent / "latest").exists()
    r = mounted.cedana("checkpoint", "seal", ckpt)
    assert r.returncode != 0 and r.stderr.count("\n") == 1
    assert "inventory.img is missing" in r.stderr
    r = mounted.cedana("checkpoint", "list", "--output", "json")
    assert "junk" not in r.stdout
    assert subprocess.run(["rm", "-r", str(ckpt)]).returncode == 0
