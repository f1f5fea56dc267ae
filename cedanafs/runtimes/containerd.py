"""containerd containers through its own `ctr` command: find a container and its task, checkpoint
it as containerd does (`ctr containers checkpoint --task --rw`: CRIU images of the task, its
writable layer, spec, runtime and image name, as a checkpoint image), export that image to an
OCI archive, and bring it back from such an archive under a new id (`ctr image import`,
`ctr containers restore --rw --live`), its task running and listed by `ctr task ls`.

containerd's shim runs runc, which runs CRIU: they find CRIU on containerd's own PATH (the
project's setup installs it in /usr/local/sbin, which is on it), not on ours.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AlreadyExists, CheckpointError, CriuError, NotFound, NotReady, UsageError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
CHECKPOINT_REF = "cedana.checkpoint/{id}:{stamp}"
REST_ARCHIVE = "containerd-checkpoint.tar"
# Files of ours beside CRIU's images in a checkpoint directory: never part of the task's images.
OWN_FILES = frozenset({REST_ARCHIVE, "container.json", "process_state.json", "criu-dump.log"})
CRIU_MEDIA_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
_IMAGE_NAME = "org.opencontainers.image.ref.name"
_INDEX_NAME = "io.containerd.image.name"


@dataclass(frozen=True)
class ContainerInfo:
    """What `ctr containers info` and `ctr task ls` say of one container."""

    id: str
    image: str
    snapshotter: str
    runtime: str
    spec: dict[str, Any] = field(default_factory=dict)
    pid: int = 0
    status: str = ""


class Ctr:
    """`ctr` bound to one containerd address and namespace."""

    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE):
        self.address = address
        self.namespace = namespace

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        binary = shutil.which("ctr")
        if not binary:
            raise NotReady("ctr is not installed: run `make setup` (Debian package containerd)")
        try:
            result = subprocess.run([binary, "-a", self.address, "-n", self.namespace, *args], capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NotReady(f"containerd at {self.address} did not answer `ctr {args[0]}` in {timeout:.0f}s") from None
        if check and result.returncode != 0:
            raise CriuError(f"ctr {' '.join(args[:2])} failed: {_message(result.stderr)}")
        return result

    def ping(self) -> None:
        if not os.path.exists(self.address):
            raise NotReady(f"containerd is not reachable at {self.address}: no such socket (--address)")
        result = self.run("version", check=False, timeout=30)
        if result.returncode != 0:
            raise NotReady(f"containerd is not reachable at {self.address}: {_message(result.stderr)}")

    def exists(self, cid: str) -> bool:
        return self.run("containers", "info", cid, check=False).returncode == 0

    def info(self, cid: str) -> ContainerInfo:
        result = self.run("containers", "info", cid, check=False)
        if result.returncode != 0:
            raise NotFound(f"no containerd container {cid!r} in namespace {self.namespace} at {self.address}")
        data = json.loads(result.stdout)
        pid, status = self.task(cid)
        return ContainerInfo(id=cid, image=data.get("Image", ""), snapshotter=data.get("Snapshotter", ""),
                             runtime=(data.get("Runtime") or {}).get("Name", ""), spec=data.get("Spec") or {},
                             pid=pid, status=status)

    def task(self, cid: str) -> tuple[int, str]:
        """(pid, status) of the container's task; (0, "") when it has none."""
        for row in self.run("tasks", "ls").stdout.splitlines()[1:]:
            parts = row.split()
            if len(parts) >= 3 and parts[0] == cid:
                return int(parts[1]), parts[2].lower()
        return 0, ""

    def images(self) -> set[str]:
        return set(self.run("images", "ls", "-q").stdout.split())

    def remove_image(self, ref: str) -> None:
        self.run("images", "rm", ref, check=False)

    def remove(self, cid: str) -> None:
        """Kill and delete the task, then the container (its snapshot goes with it)."""
        self.stop_task(cid)
        self.run("containers", "rm", cid, check=False)

    def stop_task(self, cid: str, timeout: float = 20) -> None:
        if self.task(cid)[0] == 0:
            return
        self.run("tasks", "kill", "-s", "KILL", cid, check=False)
        deadline = time.monotonic() + timeout
        while self.task(cid)[1] not in ("stopped", "") and time.monotonic() < deadline:
            time.sleep(0.1)
        self.run("tasks", "rm", "-f", cid, check=False)


def _message(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return "no message"
    line = lines[-1]
    if 'msg="' in line:
        line = line.split('msg="', 1)[1].rsplit('"', 1)[0]
    return line.removeprefix("ctr: ")


def find_running(ctr: Ctr, cid: str) -> ContainerInfo:
    ctr.ping()
    info = ctr.info(cid)
    if info.status != "running":
        raise UsageError(f"containerd container {cid} is not running ({info.status or 'no task'});"
                         " nothing to checkpoint")
    return info


def checkpoint(ctr: Ctr, cid: str, images_dir: str, leave_running: bool) -> str:
    """Checkpoint `cid` (task memory, writable layer, spec) into images_dir.

    The task's CRIU images land in images_dir as plain files (so the store deduplicates them and
    `criu`-level tools read them); the rest of containerd's checkpoint image (spec, runtime
    options, writable layer) goes in images_dir/containerd-checkpoint.tar. The task is paused
    during the checkpoint and resumed; without leave_running it is then killed and deleted (the
    container record stays). The temporary checkpoint image is always removed.
    """
    ref = CHECKPOINT_REF.format(id=cid, stamp=time.time_ns())
    work = tempfile.mkdtemp(prefix="cedana-ctrd-dump-")
    try:
        exported = os.path.join(work, "export.tar")
        ctr.run("containers", "checkpoint", "--task", "--rw", cid, ref)
        ctr.run("images", "export", "--skip-manifest-json", exported, ref)
        _split(exported, images_dir)
    finally:
        ctr.remove_image(ref)
        shutil.rmtree(work, ignore_errors=True)
    if not leave_running:
        ctr.stop_task(cid)
    log.info("containerd container %s checkpointed into %s", cid, images_dir)
    return ref


def restore(ctr: Ctr, images_dir: str, new_id: str, image: str | None = None) -> int:
    """Import the checkpoint in images_dir and restore it as container `new_id`, its task started.

    Returns the task's pid. A failed restore removes what it created (container, task, the
    imported checkpoint image) and never touches images_dir.
    """
    ctr.ping()
    if ctr.exists(new_id):
        raise AlreadyExists(f"a containerd container {new_id!r} already exists in namespace {ctr.namespace};"
                            " choose another --id")
    work = tempfile.mkdtemp(prefix="cedana-ctrd-restore-")
    try:
        archive = os.path.join(work, "checkpoint.tar")
        ref, base_image = _join(images_dir, archive, image)
        if base_image not in ctr.images():
            raise NotFound(f"image {base_image} is not in containerd at {ctr.address} (namespace {ctr.namespace}):"
                           " import or pull it first, or name another with --image")
        ctr.run("images", "import", "--no-unpack", archive)
        try:
            ctr.run("containers", "restore", "--rw", "--live", new_id, ref)
            pid, status = ctr.task(new_id)
            if status != "running":
                raise CriuError(f"the restored task of {new_id} is {status or 'missing'}, not running")
        except BaseException:
            ctr.remove(new_id)
            raise
        finally:
            ctr.remove_image(ref)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("containerd container %s restored from %s (pid %d)", new_id, images_dir, pid)
    return pid


# --- the checkpoint image: containerd's OCI archive <-> CRIU images + the rest -------------------

def _criu_descriptor(index: dict) -> dict:
    for desc in index.get("manifests", []):
        if desc.get("mediaType") == CRIU_MEDIA_TYPE:
            return desc
    raise CheckpointError("containerd's checkpoint image holds no task (CRIU) checkpoint")


def _split(exported: str, images_dir: str) -> None:
    """containerd's archive -> the CRIU images as files in images_dir + the other blobs in REST_ARCHIVE."""
    with tarfile.open(exported) as tar:
        top = json.load(_member(tar, "index.json"))
        index = json.load(_member(tar, _blob_name(top["manifests"][0]["digest"])))
        criu_blob = _blob_name(_criu_descriptor(index)["digest"])
        with tarfile.open(os.path.join(images_dir, REST_ARCHIVE), "w") as rest:
            for member in tar.getmembers():
                if member.name == criu_blob:
                    _extract_flat(_member(tar, criu_blob), images_dir)
                else:
                    rest.addfile(member, tar.extractfile(member) if member.isfile() else None)


def _extract_flat(stream: Any, dest: str) -> None:
    with tarfile.open(fileobj=stream, mode="r|") as images:
        for member in images:
            name = member.name.removeprefix("./")
            if not member.isfile() or "/" in name or name in OWN_FILES:
                continue
            with open(os.path.join(dest, name), "wb") as out:
                shutil.copyfileobj(images.extractfile(member), out)


def _join(images_dir: str, out: str, image: str | None) -> tuple[str, str]:
    """The CRIU images + REST_ARCHIVE -> an archive for `ctr image import` (its index pointing at a
    fresh tar of the images, and at `image` when given). Returns (checkpoint ref, base image)."""
    criu_tar = io.BytesIO()
    with tarfile.open(fileobj=criu_tar, mode="w") as images:
        for name in sorted(os.listdir(images_dir)):
            if name not in OWN_FILES and os.path.isfile(os.path.join(images_dir, name)):
                images.add(os.path.join(images_dir, name), arcname=name)
    criu_blob = criu_tar.getvalue()
    with tarfile.open(os.path.join(images_dir, REST_ARCHIVE)) as rest, tarfile.open(out, "w") as tar:
        top = json.load(_member(rest, "index.json"))
        entry = top["manifests"][0]
        index = json.load(_member(rest, _blob_name(entry["digest"])))
        base_image = image or index.get("annotations", {}).get(_IMAGE_NAME, "")
        index.setdefault("annotations", {})[_IMAGE_NAME] = base_image
        _criu_descriptor(index).update(digest=_add(tar, criu_blob), size=len(criu_blob))
        index_blob = json.dumps(index).encode()
        entry.update(digest=_add(tar, index_blob), size=len(index_blob))
        for member in rest.getmembers():
            if member.name != "index.json" and not tar_has(tar, member.name):
                tar.addfile(member, rest.extractfile(member) if member.isfile() else None)
        _add(tar, json.dumps(top).encode(), "index.json")
    return entry.get("annotations", {}).get(_INDEX_NAME, ""), base_image


def tar_has(tar: tarfile.TarFile, name: str) -> bool:
    return name in tar.getnames()


def _member(tar: tarfile.TarFile, name: str) -> Any:
    try:
        found = tar.extractfile(name)
    except KeyError:
        found = None
    if found is None:
        raise CheckpointError(f"the containerd checkpoint archive lacks {name}")
    return found


def _blob_name(digest: str) -> str:
    algo, hexa = digest.split(":", 1)
    return f"blobs/{algo}/{hexa}"


def _add(tar: tarfile.TarFile, data: bytes, name: str = "") -> str:
    """Add data as a blob (or under `name`); returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(name or _blob_name(digest))
    info.size, info.mode = len(data), 0o444
    tar.addfile(info, io.BytesIO(data))
    return digest
