"""Podman with runc and a private root, for the container checkpoint tests.

Podman (Debian's 4.3) with runc (Debian's crun has no CRIU support) makes and restores real
container checkpoint archives, the format the kubelet, CRI-O and containerd write. Everything it
keeps lives under a temp dir (--root, --runroot, --tmpdir, vfs storage, no network); the image is
a busybox-static rootfs imported with `podman import`. Teardown removes every container and image
and unmounts whatever podman left mounted there, even when a test failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

IMAGE = "localhost/cedana-test-busybox:1"
# Holds ~43 MiB of random text in a shell variable (unchanged between checkpoints), then counts.
COUNTER = ("big=$(head -c 32000000 /dev/urandom | base64); i=0; "
           "while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done")


@dataclass
class Podman:
    base: Path

    def args(self) -> list[str]:
        return ["podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "run"),
                "--tmpdir", str(self.base / "tmp"), "--storage-driver", "vfs", "--runtime", "runc",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.args(), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"podman {' '.join(map(str, args))} failed: {r.stderr}"
        return r

    def run_counter(self, name: str) -> None:
        self("run", "-d", "--name", name, "--network", "none", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=4096:4096", IMAGE, "sh", "-c", COUNTER)
        self.wait_count(name, 2)

    def count(self, name: str) -> int:
        r = self("exec", name, "cat", "/tmp/count", check=False)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else -1

    def wait_count(self, name: str, at_least: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.count(name)
            if n >= at_least:
                return n
            time.sleep(0.2)
        raise AssertionError(f"container {name} never counted to {at_least}: {self('logs', name, check=False).stderr}")

    def checkpoint(self, name: str, dest: Path, compression: str) -> Path:
        """Checkpoint a running container into an archive, leaving it running."""
        self("container", "checkpoint", "--leave-running", "--export", dest, "--compress", compression, name)
        return dest

    def cleanup(self) -> None:
        self("rm", "-af", "-t", "0", check=False)
        self("rmi", "-af", check=False)


def _rootfs_tar(path: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)


def _unmount_below(base: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(str(base) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """A private Podman with the busybox image; module-scoped, cleaned up at the end."""
    if not shutil.which("podman"):
        pytest.fail("podman is not installed (scripts/setup.sh installs it)")
    base = tmp_path_factory.mktemp("podman")
    p = Podman(base)
    try:
        _rootfs_tar(base / "rootfs.tar")
        p("import", base / "rootfs.tar", IMAGE)
        yield p
    finally:
        p.cleanup()
        _unmount_below(base)
        shutil.rmtree(base / "root", ignore_errors=True)
        shutil.rmtree(base / "run", ignore_errors=True)


@pytest.fixture
def podman_container(podman, request):
    """A running counter container, removed after the test."""
    name = f"ctr-{os.getpid()}-{request.node.name}".replace("[", "-").replace("]", "")[:60]
    podman.run_counter(name)
    try:
        yield name
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
