"""Fixtures for container tests: OCI bundles with a busybox-static rootfs made locally, containers
started with the real runc under a private --root, and (fixtures_containerd.py) a private containerd.

Teardown, even after a failure: every container under the private root is killed and deleted,
and the bundles and root are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures_procs import wait_for

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "sleep", "echo", "cat", "nc", "ls", "seq", "touch", "tail", "true", "printf", "head", "base64")
COUNTER = 'i=0; while true; do i=$((i+1)); echo "$i" > /data/count; echo "$i"; sleep 0.1; done'


def make_rootfs(rootfs: Path) -> Path:
    """A minimal rootfs: busybox-static and links for the applets the tests run."""
    for sub in ("bin", "proc", "sys", "dev", "tmp", "data", "etc"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        link = rootfs / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    return rootfs


def make_bundle(bundle: Path, args: list[str], host_network: bool = False) -> Path:
    """`runc spec`, edited: no terminal, a writable rootfs, this command; host network if asked."""
    bundle.mkdir(parents=True, exist_ok=True)
    make_rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True, capture_output=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["root"]["readonly"] = False
    if host_network:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


class Runc:
    """A private runc --root and the bundles made for one test."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "runc-root"
        self.root.mkdir()

    def bundle(self, name: str, script: str = COUNTER, host_network: bool = False) -> Path:
        return make_bundle(self.base / name, ["/bin/sh", "-c", script], host_network=host_network)

    def runc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["runc", "--root", str(self.root), *args], capture_output=True, text=True,
                              check=check, stdin=subprocess.DEVNULL)

    def start(self, cid: str, bundle: Path, log: Path) -> int:
        """`runc run -d` with stdout/stderr a pipe that `cat` copies into log (CRIU can dump a pipe)."""
        read_end, write_end = os.pipe()
        with open(log, "ab") as out:
            subprocess.Popen(["cat"], stdin=read_end, stdout=out, start_new_session=True)
        os.close(read_end)
        try:
            subprocess.run(["runc", "--root", str(self.root), "run", "-d", "--bundle", str(bundle), cid],
                           stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, check=True)
        finally:
            os.close(write_end)
        return self.state(cid)["pid"]

    def state(self, cid: str) -> dict | None:
        result = self.runc("state", cid, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def status(self, cid: str) -> str | None:
        state = self.state(cid)
        return state["status"] if state else None

    def ids(self) -> list[str]:
        result = self.runc("list", "--format", "json", check=False)
        return [c["id"] for c in json.loads(result.stdout or "null") or []]

    def cleanup(self) -> None:
        for cid in self.ids():
            self.runc("kill", cid, "KILL", check=False)
            wait_for(lambda c=cid: self.status(c) in (None, "stopped"), timeout=10, what=f"{cid} to stop")
            self.runc("delete", "--force", cid, check=False)


def read_count(path: Path, tries: int = 50) -> int:
    """A counter file the container rewrites (`echo > f` truncates first): retried while empty."""
    for _ in range(tries):
        try:
            text = path.read_text().strip()
        except OSError:
            return 0
        if text:
            return int(text)
        time.sleep(0.01)
    return 0


def count_of(bundle: Path) -> int:
    """The counter the container keeps in its rootfs (/data/count)."""
    return read_count(bundle / "rootfs" / "data" / "count")


def wait_counting(bundle: Path, above: int = 0, timeout: float = 20) -> int:
    return wait_for(lambda: count_of(bundle) if count_of(bundle) > above else None, timeout=timeout,
                    what=f"the container's counter to pass {above}")


@pytest.fixture
def runc_env():
    base = Path(tempfile.mkdtemp(prefix="cedana-runc-test-", dir="/tmp"))
    env = Runc(base)
    try:
        yield env
    finally:
        env.cleanup()
        shutil.rmtree(base, ignore_errors=True)
