"""A private containerd for tests: started on its own socket, root and state directory with a
minimal config (no CRI plugin), an OCI image built locally from the busybox rootfs and imported
with `ctr image import`. Teardown, even after a failure: every task is killed, every container
deleted, containerd stopped and its directories removed.

Each one uses its own namespace: the runc shim keeps its runc state in /run/containerd/runc/<ns>
and its cgroups under /<ns>/ whatever containerd it serves, so two test runs on one machine
must not share a namespace.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import itertools
import os
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures_containers import make_rootfs
from tests.fixtures_procs import wait_for

IMAGE = "docker.io/cedana/busybox-test:1"
NAMESPACE = "cedana-test"
_instances = itertools.count()


def _blob(out: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (out / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (out / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(rootfs: Path) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(rootfs.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False)
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def build_image_tar(work: Path, ref: str = IMAGE) -> Path:
    """An OCI image archive (oci-layout, index.json, manifest, config, one gzip layer) of the busybox rootfs."""
    layout = work / "layout"
    layer, diff_id = _layer(make_rootfs(work / "rootfs"))
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"}}
    config_desc = _blob(layout, json.dumps(config).encode())
    layer_desc = _blob(layout, layer)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer_desc}]}
    manifest_desc = _blob(layout, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_desc,
        "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]},
        "platform": {"architecture": "amd64", "os": "linux"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    out = work / "image.tar"
    with tarfile.open(out, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return out


CONFIG = """version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""


class Containerd:
    """One private containerd and the `ctr` command bound to it."""

    def __init__(self, base: Path):
        self.base = base
        self.address = base / "containerd.sock"
        self.namespace = f"{NAMESPACE}-{os.getpid()}-{next(_instances)}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        (self.base / "config.toml").write_text(CONFIG.format(base=self.base))
        with open(self.base / "containerd.log", "ab") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_for(self._ready, timeout=60, what="containerd to listen")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"containerd exited: {(self.base / 'containerd.log').read_text()[-2000:]}")
        return self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True, namespace: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(["ctr", "-a", str(self.address), "-n", namespace or self.namespace, *map(str, args)],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(map(str, args))}: {result.stderr.strip()}")
        return result

    def import_image(self, ref: str = IMAGE) -> str:
        self.ctr("image", "import", build_image_tar(Path(tempfile.mkdtemp(dir=self.base)), ref))
        return ref

    def tasks(self) -> dict[str, dict]:
        """ctr task ls: id -> {pid, status}."""
        rows = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {r.split()[0]: {"pid": int(r.split()[1]), "status": r.split()[2]} for r in rows if r.strip()}

    def containers(self) -> list[str]:
        return [r.split()[0] for r in self.ctr("container", "ls", "-q").stdout.splitlines() if r.strip()]

    def cleanup(self) -> None:
        if self.proc is None:
            return
        for namespace in self._namespaces():
            for cid in self.ctr("task", "ls", "-q", check=False, namespace=namespace).stdout.split():
                self.ctr("task", "kill", "-s", "KILL", cid, check=False, namespace=namespace)
            time.sleep(0.5)
            for cid in self.ctr("container", "ls", "-q", check=False, namespace=namespace).stdout.split():
                self.ctr("task", "rm", "-f", cid, check=False, namespace=namespace)
                self.ctr("container", "rm", cid, check=False, namespace=namespace)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        subprocess.run(["umount", "-R", "-l", str(self.base / "state")], capture_output=True)
        subprocess.run(["umount", "-R", "-l", str(self.base / "root")], capture_output=True)
        shim_dirs = [*Path("/sys/fs/cgroup").glob(f"*/{self.namespace}"), Path("/sys/fs/cgroup") / self.namespace,
                     Path("/run/containerd/runc") / self.namespace]
        for parent in shim_dirs:  # the shim's cgroups and runc state, per namespace
            try:
                parent.rmdir()  # only when empty: nothing of anyone else's goes
            except OSError:
                pass

    def _namespaces(self) -> list[str]:
        result = self.ctr("namespace", "ls", "-q", check=False)
        return result.stdout.split() or [self.namespace]


@pytest.fixture
def containerd_env():
    base = Path(tempfile.mkdtemp(prefix="cedana-ctrd-", dir="/tmp"))
    env = Containerd(base)
    try:
        env.start()
        env.import_image()
        yield env
    finally:
        env.cleanup()
        shutil.rmtree(base, ignore_errors=True)
