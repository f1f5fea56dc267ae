"""containerd containers: find a container and its task, checkpoint it, and bring it back under a
new id with its task running under containerd (listed by `ctr task ls`), its output in a log.

The checkpoint is what containerd's own (`ctr containers checkpoint --task --rw`) holds, made in
two steps so that CRIU gets the options containerd's command line cannot pass: the task's CRIU
images come from `runc checkpoint` run on the shim's runc state (`<runc root>/<namespace>`, as the
shim itself would, but with --tcp-established when asked, and ending the task inside CRIU rather
than after it), then `ctr containers checkpoint --rw` (no task left to pause) exports its
writable layer, runtime and image name. A restore joins them into containerd's checkpoint image
(adding the task's images and its spec), `ctr image import` and `ctr containers restore --rw
--live`. The shim's `runc restore` takes no CRIU flags; the spec's `org.criu.config` annotation
names a CRIU configuration file (`tcp-established`) for it when the connections must come back.

`ctr containers restore` gives the task FIFOs for its stdio that only it reads, and it exits at
once: the restore then hands those FIFOs (found among the task's shim's descriptors) to a
detached `cat` that appends them to the log.
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
from . import runc

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
CHECKPOINT_REF = "cedana.checkpoint/{id}:{stamp}"
REST_ARCHIVE = "containerd-checkpoint.tar"
# Files of ours beside CRIU's images in a checkpoint directory: never part of the task's images.
OWN_FILES = frozenset({REST_ARCHIVE, "container.json", "process_state.json", "criu-dump.log"})
CRIU_MEDIA_TYPE = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CONFIG_MEDIA_TYPE = "application/vnd.containerd.container.checkpoint.config.v1+proto"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
SHIM_RUNC_ROOT = "/run/containerd/runc"  # the runc shim's default runc --root (one per namespace below it)
CRIU_CONFIG_ANNOTATION = "org.criu.config"  # runc hands this file to CRIU as its configuration
TCP_CONFIG = "/var/lib/cedana/criu/tcp-established.conf"
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
    runtime_options: dict[str, Any] = field(default_factory=dict)


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
        runtime = data.get("Runtime") or {}
        return ContainerInfo(id=cid, image=data.get("Image", ""), snapshotter=data.get("Snapshotter", ""),
                             runtime=runtime.get("Name", ""), spec=data.get("Spec") or {}, pid=pid, status=status,
                             runtime_options=runtime.get("Options") or {})

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


def runc_root(info: ContainerInfo, namespace: str) -> str:
    """The runc --root under which the shim runs this container (its runtime options' root, else the default)."""
    root = info.runtime_options.get("root") or info.runtime_options.get("Root") or SHIM_RUNC_ROOT
    return os.path.join(root, namespace)


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    leave_running: bool = False
    tcp_established: bool = False
    criu_binary: str = ""


def checkpoint(ctr: Ctr, info: ContainerInfo, images_dir: str, opts: CheckpointOptions) -> str:
    """Checkpoint the running container `info` (task memory, writable layer, runtime) into images_dir.

    The task's CRIU images land in images_dir as plain files (so the store deduplicates them and
    CRIU tools read them), runc's dump log as criu-dump.log; the rest of containerd's checkpoint
    image goes in images_dir/containerd-checkpoint.tar. Without leave_running the task ends as
    CRIU finishes (its TCP connections stay frozen, not reset) and its record is deleted (the
    container's stays); if CRIU fails the task runs on. The temporary checkpoint image is removed.
    """
    ref = CHECKPOINT_REF.format(id=info.id, stamp=time.time_ns())
    work = tempfile.mkdtemp(prefix="cedana-ctrd-dump-")
    try:
        runc.checkpoint(runc.CheckpointOptions(
            id=info.id, root=runc_root(info, ctr.namespace), images_dir=images_dir, work_dir=work,
            leave_running=opts.leave_running, tcp_established=opts.tcp_established),
            opts.criu_binary)
        runc_log = os.path.join(work, runc.CHECKPOINT_LOG)
        if os.path.exists(runc_log):
            shutil.copyfile(runc_log, os.path.join(images_dir, "criu-dump.log"))
        if not opts.leave_running:
            ctr.stop_task(info.id)  # runc ended it; without a task, `containers checkpoint` pauses nothing
        exported = os.path.join(work, "export.tar")
        ctr.run("containers", "checkpoint", "--rw", info.id, ref)
        ctr.run("images", "export", "--skip-manifest-json", exported, ref)
        _split(exported, images_dir)
    finally:
        ctr.remove_image(ref)
        shutil.rmtree(work, ignore_errors=True)
    log.info("containerd container %s checkpointed into %s", info.id, images_dir)
    return ref


@dataclass(frozen=True, kw_only=True)
class RestoreOptions:
    new_id: str
    spec: dict[str, Any]
    image: str | None = None
    tcp_established: bool = False
    log_path: str = ""


def restore(ctr: Ctr, images_dir: str, opts: RestoreOptions) -> int:
    """Import the checkpoint in images_dir and restore it as container opts.new_id, its task started
    and its output appended to opts.log_path.

    Returns the task's pid. A failed restore removes what it created (container, task, the
    imported checkpoint image) and never touches images_dir.
    """
    new_id = opts.new_id
    ctr.ping()
    if ctr.exists(new_id):
        raise AlreadyExists(f"a containerd container {new_id!r} already exists in namespace {ctr.namespace};"
                            " choose another --id")
    created = bool(opts.log_path) and not os.path.exists(opts.log_path)
    log_fd = _open_log(opts.log_path) if opts.log_path else None
    try:
        try:
            pid, early = _restore(ctr, images_dir, opts)
        except BaseException:
            if created:  # a failed restore leaves nothing behind, not even an empty log
                os.unlink(opts.log_path)
            raise
        if log_fd is not None:
            relay_output(pid, new_id, log_fd, early)
    finally:
        if log_fd is not None:
            os.close(log_fd)
    log.info("containerd container %s restored from %s (pid %d)", new_id, images_dir, pid)
    return pid


def _open_log(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write the container's output to {path}: {exc.strerror}") from None


def _restore(ctr: Ctr, images_dir: str, opts: RestoreOptions) -> tuple[int, str]:
    """The restore itself; returns the task's pid and what `ctr` printed of its output."""
    new_id = opts.new_id
    spec = opts.spec
    if opts.tcp_established:
        annotations = dict(spec.get("annotations") or {}) | {CRIU_CONFIG_ANNOTATION: tcp_config()}
        spec = spec | {"annotations": annotations}
    work = tempfile.mkdtemp(prefix="cedana-ctrd-restore-")
    try:
        archive = os.path.join(work, "checkpoint.tar")
        ref, base_image = _join(images_dir, archive, opts.image, spec)
        if base_image not in ctr.images():
            raise NotFound(f"image {base_image} is not in containerd at {ctr.address} (namespace {ctr.namespace}):"
                           " import or pull it first, or name another with --image")
        ctr.run("images", "import", "--no-unpack", archive)
        try:
            result = ctr.run("containers", "restore", "--rw", "--live", new_id, ref)
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
    return pid, result.stdout + result.stderr


def tcp_config() -> str:
    """The CRIU configuration file that makes runc's CRIU restore (and dump) established TCP connections."""
    try:
        with open(TCP_CONFIG) as f:
            if f.read() == "tcp-established\n":
                return TCP_CONFIG
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(TCP_CONFIG), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(TCP_CONFIG), delete=False) as f:
        f.write("tcp-established\n")
    os.replace(f.name, TCP_CONFIG)
    return TCP_CONFIG


# --- the restored task's output ----------------------------------------------------------------

def output_fifos(pid: int, cid: str) -> list[str]:
    """The stdout and stderr FIFOs of task `cid` (pid `pid`), as its shim (the task's parent) holds them."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            shim = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return []
    found: list[str] = []
    fd_dir = f"/proc/{shim}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    for name in names:
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if os.path.basename(target) in (f"{cid}-stdout", f"{cid}-stderr") and target not in found:
            found.append(target)
    return sorted(found, reverse=True)  # stdout first


def relay_output(pid: int, cid: str, log_fd: int, early: str = "") -> None:
    """Append what task `cid` printed while `ctr` read it (`early`), then everything it prints
    from now on, to log_fd: a detached `cat` per FIFO, ending when the shim closes them."""
    if early:
        os.write(log_fd, early.encode())
    fifos = output_fifos(pid, cid)
    if not fifos:
        log.warning("containerd container %s: its output FIFOs were not found; its output is not logged", cid)
    for fifo in fifos:
        subprocess.run(["setsid", "--fork", "cat", fifo], stdin=subprocess.DEVNULL, stdout=log_fd,
                       stderr=subprocess.DEVNULL, check=True)


# --- the checkpoint image: containerd's OCI archive <-> CRIU images + the rest -------------------

def _split(exported: str, images_dir: str) -> None:
    """containerd's archive -> the CRIU images as files in images_dir (when it holds them: a
    checkpoint made by `ctr containers checkpoint --task`) + the other blobs in REST_ARCHIVE."""
    with tarfile.open(exported) as tar:
        top = json.load(_member(tar, "index.json"))
        index = json.load(_member(tar, _blob_name(top["manifests"][0]["digest"])))
        criu = [d for d in index.get("manifests", []) if d.get("mediaType") == CRIU_MEDIA_TYPE]
        criu_blob = _blob_name(criu[0]["digest"]) if criu else None
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


def _join(images_dir: str, out: str, image: str | None, spec: dict[str, Any]) -> tuple[str, str]:
    """The CRIU images + REST_ARCHIVE + `spec` -> an archive for `ctr image import`: its index
    points at a fresh tar of the images, at `spec` as the container's configuration, and at
    `image` when given. Returns (checkpoint ref, base image)."""
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
        spec_blob = _spec_any(spec)
        platform = {"architecture": "amd64", "os": "linux"}
        index["manifests"] = [d for d in index.get("manifests", [])
                              if d.get("mediaType") not in (CRIU_MEDIA_TYPE, CONFIG_MEDIA_TYPE)] + [
            {"mediaType": CRIU_MEDIA_TYPE, "digest": _add(tar, criu_blob), "size": len(criu_blob),
             "platform": platform},
            {"mediaType": CONFIG_MEDIA_TYPE, "digest": _add(tar, spec_blob), "size": len(spec_blob),
             "platform": platform}]
        index_blob = json.dumps(index).encode()
        entry.update(digest=_add(tar, index_blob), size=len(index_blob))
        for member in rest.getmembers():
            if member.name != "index.json" and not tar_has(tar, member.name):
                tar.addfile(member, rest.extractfile(member) if member.isfile() else None)
        _add(tar, json.dumps(top).encode(), "index.json")
    return entry.get("annotations", {}).get(_INDEX_NAME, ""), base_image


def _spec_any(spec: dict[str, Any]) -> bytes:
    """The spec as containerd keeps it in a checkpoint: a protobuf Any (type URL, JSON value)."""
    return _proto_bytes(1, SPEC_TYPE_URL.encode()) + _proto_bytes(2, json.dumps(spec).encode())


def _proto_bytes(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field."""
    out, n = bytearray([number << 3 | 2]), len(data)
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out) + data


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
