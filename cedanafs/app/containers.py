"""Use cases for containers: `dump runc`, `restore runc`, `run runc` (without a daemon),
`dump containerd`, `restore containerd`; the daemon's container jobs are in container_jobs.py.

A container checkpoint is a CRIU images directory like a process's (the runtime writes CRIU's
images into it), plus `container.json`: what a restore needs (runtime, id, root, bundle and a hash
of its config.json for runc; image, snapshotter, runtime, spec, namespace for containerd) and
`process_state.json` of the container's init. It goes where process dumps go: a directory, an
archive, the mount (jobs/<job>/<id>/, deduplicated by the store) or a bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

from ..config import Settings
from ..errors import AlreadyExists, CheckpointError, NotFound, UsageError
from ..criu import find_criu
from ..criu.lazy import RESTORED_PID, LazyPages
from ..runtimes import containerd, runc
from . import archive, capture, remote
from . import mount as mountapp
from .procinfo import dumpable_process, process_state
from .process import (DUMP_LOG, STATE_FILE, DumpResult, ImagesDir, RestoreResult, _check_name, _check_parent,
                      _publish, _size, require_root, resolve_compression, streams_of)

log = logging.getLogger(__name__)

CONTAINER_FILE = "container.json"
RUNC = "runc"
CONTAINERD = "containerd"
LOG_TEMPLATE = "/var/log/cedana-output-{id}.log"
LAZY_CONTAINERD = ("--lazy is not supported for containerd: containerd copies the checkpoint's images into its"
                   " own store and its shim restores without lazy pages; restore eagerly")


@dataclass(frozen=True, kw_only=True)
class ContainerRecord:
    """container.json: what restoring a container needs, beside CRIU's images."""

    runtime: str
    id: str
    root: str = ""
    bundle: str = ""
    config_sha256: str = ""
    pid: int = 0
    image: str = ""
    snapshotter: str = ""
    namespace: str = ""
    address: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    runtime_name: str = ""
    tcp_established: bool = False
    file_locks: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, images_dir: str, source: str) -> "ContainerRecord":
        try:
            with open(os.path.join(images_dir, CONTAINER_FILE)) as f:
                data = json.load(f)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except FileNotFoundError:
            raise CheckpointError(f"{source} is not a container checkpoint (no {CONTAINER_FILE})") from None
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{source}: unreadable {CONTAINER_FILE} ({exc})") from None


@dataclass(frozen=True, kw_only=True)
class RuncDumpRequest:
    id: str
    root: str = runc.DEFAULT_ROOT
    dir: str | None = None
    name: str | None = None
    compression: str | None = None
    leave_running: bool | None = None
    tcp_established: bool = False
    file_locks: bool = False
    shell_job: bool = False
    ext_unix_sk: bool = False
    streams: int = 0


@dataclass(frozen=True, kw_only=True)
class RuncRestoreRequest:
    path: str
    id: str | None = None
    bundle: str | None = None
    root: str | None = None
    detach: bool = True
    out: str | None = None
    lazy: bool = False
    pid_file: str | None = None
    tcp_established: bool = False
    file_locks: bool = False
    shell_job: bool = False
    ext_unix_sk: bool = False
    streams: int = 0


def bundle_hash(bundle: str) -> str:
    """sha256 of the bundle's config.json: a restore into another bundle must run the same spec."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        raise NotFound(f"{bundle} is not an OCI bundle (no config.json)") from None


# --- dump ---------------------------------------------------------------------------------------

def _write_records(images_dir: str, record: ContainerRecord, state: dict, work_dir: str) -> None:
    with open(os.path.join(images_dir, CONTAINER_FILE), "w") as f:
        json.dump(record.to_dict(), f, indent=2)
    with open(os.path.join(images_dir, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)
    runc_log = os.path.join(work_dir, runc.CHECKPOINT_LOG)
    if os.path.exists(runc_log):
        shutil.copyfile(runc_log, os.path.join(images_dir, DUMP_LOG))


def checkpoint_runc(settings: Settings, container: runc.Container, images_dir: str, *, leave_running: bool,
                    tcp_established: bool = False, file_locks: bool = False, shell_job: bool = False,
                    ext_unix_sk: bool = False, job: dict | None = None) -> ContainerRecord:
    """runc checkpoints `container` into images_dir, then its records go beside CRIU's images."""
    state = process_state(dumpable_process(container.pid)).to_dict()
    if job:
        state["job"] = job
    record = ContainerRecord(runtime=RUNC, id=container.id, root=container.root, bundle=container.bundle,
                             config_sha256=bundle_hash(container.bundle), pid=container.pid,
                             tcp_established=tcp_established or state.get("tcp_established", False),
                             file_locks=file_locks)
    work = tempfile.mkdtemp(prefix="cedana-runc-dump-")
    try:
        runc.checkpoint(runc.CheckpointOptions(
            id=container.id, root=container.root, images_dir=images_dir, work_dir=work,
            leave_running=leave_running, tcp_established=record.tcp_established, file_locks=file_locks,
            shell_job=shell_job, ext_unix_sk=ext_unix_sk), settings.criu.binary_path)
        _write_records(images_dir, record, state, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def dump_runc(settings: Settings, req: RuncDumpRequest) -> DumpResult:
    """`dump runc ID`: into a directory, an archive, the mount or a bucket, as `dump process`."""
    require_root()
    compression = resolve_compression(settings, req.compression)
    container = runc.find_running(req.root, req.id)
    leave_running = settings.criu.leave_running if req.leave_running is None else req.leave_running

    def fill(images_dir: str) -> None:
        checkpoint_runc(settings, container, images_dir, leave_running=leave_running,
                        tcp_established=req.tcp_established, file_locks=req.file_locks, shell_job=req.shell_job,
                        ext_unix_sk=req.ext_unix_sk)

    target = req.dir or settings.checkpoint.dir or "/tmp"
    name = _check_name(req.name or f"dump-runc-{time.time_ns()}")
    return dump_images(settings, fill, target, name, compression, kind=RUNC, pid=container.pid,
                       explicit_name=req.name is not None, streams=req.streams)


def dump_images(settings: Settings, fill: Callable[[str], None], target: str, name: str, compression: str, *,
                kind: str, pid: int, explicit_name: bool = True, streams: int = 0) -> DumpResult:
    """Run `fill(images_dir)` and publish its images at `target` under `name`; nothing is left on failure."""
    started = time.monotonic()
    if remote.is_remote(target):
        return _dump_to_bucket(settings, fill, target, name, compression, pid, started)
    if mountapp.mount_of(target) is not None:
        done = into_mount(settings, fill, target, name if explicit_name else None, streams, kind=kind, pid=pid)
        return DumpResult(path=done.path, pid=pid, name=os.path.basename(done.path), compression="none",
                          size=_size(done.path), duration=time.monotonic() - started,
                          captured_after=round(done.captured_after, 3),
                          committed_after=round(done.committed_after, 3), via=done.via)
    parent = _check_parent(target)
    final = os.path.join(parent, archive.archive_name(name, compression))
    if os.path.lexists(final):
        raise AlreadyExists(f"{final} already exists; choose another --name")
    staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent)
    try:
        fill(staging)
        _publish(staging, final, compression)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DumpResult(path=final, pid=pid, name=name, compression=compression, size=_size(final),
                      duration=time.monotonic() - started)


def into_mount(settings: Settings, fill: Callable[[str], None], job_dir: str, name: str | None, streams: int, *,
               kind: str, pid: int) -> capture.Captured:
    """A new checkpoint of the mount's job dir by the path process dumps take: the runtime writes
    the images into the local spool and the store takes them from there (through the mount when
    the spool cannot hold them); a failure leaves no checkpoint. The runtime itself ends the
    container or leaves it running, so nothing here signals its processes."""
    return capture.dump_into_mount(settings, job_dir, name, streams or settings.checkpoint.streams, pid=pid,
                                   leave_running=True, run_dump=lambda images, _stopped: fill(images), kind=kind,
                                   meta={"pid": str(pid)})


def _dump_to_bucket(settings: Settings, fill: Callable[[str], None], url: str, name: str, compression: str,
                    pid: int, started: float) -> DumpResult:
    from ..streamer import open_backend

    backend = open_backend(url, settings)
    remote.ensure_absent(backend, url, name, compression)
    staging = tempfile.mkdtemp(prefix=f"cedana-dump-{name}-")
    try:
        fill(staging)
        size = _size(staging)
        path = remote.upload_checkpoint(backend, url, staging, name, compression)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DumpResult(path=path, pid=pid, name=name, compression=compression, size=size,
                      duration=time.monotonic() - started)


# --- restore ------------------------------------------------------------------------------------

def _check_bundle(record: ContainerRecord, bundle: str, source: str) -> None:
    if record.config_sha256 and bundle_hash(bundle) != record.config_sha256:
        raise UsageError(f"bundle {bundle} does not match the checkpoint {source}: its config.json differs from"
                         f" the one of {record.bundle} it was dumped with")


def restore_runc_images(settings: Settings, images_dir: str, source: str, record: ContainerRecord, *,
                        cid: str, root: str, bundle: str, stdio: tuple[int | None, int | None, int | None],
                        detach: bool = True, lazy: bool = False, tcp_established: bool = False,
                        file_locks: bool = False, shell_job: bool = False, ext_unix_sk: bool = False,
                        threads: int = 8, servers: list | None = None) -> int:
    """runc restores `cid` from images_dir; returns the restored init's pid (or, attached, its exit code)."""
    _check_bundle(record, bundle, source)
    if runc.exists(root, cid):
        raise AlreadyExists(f"a runc container {cid!r} already exists under --root {root};"
                            " choose another --id or delete it first")
    work = tempfile.mkdtemp(prefix="cedana-runc-restore-")
    pages = _start_lazy_pages(settings, images_dir, work, threads) if lazy else None
    try:
        code = runc.restore(runc.RestoreOptions(
            id=cid, root=root, bundle=bundle, images_dir=images_dir, work_dir=work, detach=detach,
            tcp_established=tcp_established or record.tcp_established, file_locks=file_locks or record.file_locks,
            shell_job=shell_job, ext_unix_sk=ext_unix_sk, lazy_pages=lazy), stdio, settings.criu.binary_path)
    except BaseException:
        if pages is not None:
            pages.kill()
        raise
    finally:
        if pages is None:
            shutil.rmtree(work, ignore_errors=True)
    if not detach:
        return code
    pid = runc.find(root, cid).pid
    if pages is not None:
        _watch_lazy(pages, work, pid)
        if servers is not None:  # the caller reaps the lazy-pages server once it has sent every page
            servers.append(pages)
    return pid


def _watch_lazy(pages: Any, work: str, pid: int) -> None:
    """Tell the lazy-pages watchdog which tree to kill should serving the pages fail."""
    try:
        with open(os.path.join(work, RESTORED_PID), "w") as f:
            f.write(str(pid))
    except FileNotFoundError:
        pass  # every page was already sent: the server removed its work dir


def _start_lazy_pages(settings: Settings, images_dir: str, work: str, threads: int) -> Any:
    """`criu lazy-pages` serving the mounted images to runc's CRIU through the shared work dir."""
    if mountapp.mount_of(images_dir) is None:
        raise UsageError("--lazy restores from a checkpoint directory in a cedanafs mount")
    try:
        mountapp.prefetch_images(images_dir, threads=threads)
    except OSError as exc:
        raise CheckpointError(f"cannot read the images of {images_dir} from the store: {exc.strerror or exc};"
                              " nothing was restored") from None
    return LazyPages(images_dir, work, find_criu(settings.criu.binary_path)).start()


def _runc_record(images_dir: str, req: RuncRestoreRequest) -> ContainerRecord:
    """container.json; for a plain `runc checkpoint` directory (no record, runc's descriptors.json),
    what --id and --bundle say, which then must both be given."""
    if os.path.exists(os.path.join(images_dir, CONTAINER_FILE)):
        return ContainerRecord.read(images_dir, req.path)
    if not os.path.exists(os.path.join(images_dir, "descriptors.json")):
        raise CheckpointError(f"{req.path} is not a container checkpoint (no {CONTAINER_FILE})")
    if not (req.id and req.bundle):
        raise UsageError(f"{req.path} is a plain runc checkpoint (no {CONTAINER_FILE}): give --id and --bundle")
    return ContainerRecord(runtime=RUNC, id=req.id, bundle=os.path.abspath(req.bundle))


def restore_runc(settings: Settings, req: RuncRestoreRequest) -> RestoreResult:
    """`restore runc --path P`: the container runs again under --id (default: the dumped id)."""
    require_root()
    if req.lazy and not req.detach:
        raise UsageError("--lazy restores a detached container: add --detach")
    with ImagesDir(req.path, settings, local_copy=not req.lazy) as images:
        record = _runc_record(images.path, req)
        if record.runtime != RUNC:
            raise UsageError(f"{req.path} is a {record.runtime} checkpoint: use `cedana restore {record.runtime}`")
        cid, root = req.id or record.id, req.root or record.root or runc.DEFAULT_ROOT
        bundle = os.path.abspath(req.bundle or record.bundle)
        write_end = runc.relay_to(req.out or LOG_TEMPLATE.format(id=cid)) if req.detach else None
        stdio = (None, write_end, write_end) if req.detach else (0, 1, 2)
        try:
            value = restore_runc_images(settings, images.path, req.path, record, cid=cid, root=root, bundle=bundle,
                                        stdio=stdio, detach=req.detach, lazy=req.lazy,
                                        tcp_established=req.tcp_established, file_locks=req.file_locks,
                                        shell_job=req.shell_job, ext_unix_sk=req.ext_unix_sk,
                                        threads=streams_of(settings, req.streams))
        finally:
            if write_end is not None:
                os.close(write_end)
    if not req.detach:
        return RestoreResult(pid=0, exit_code=value)
    if req.pid_file:
        with open(req.pid_file, "w") as f:
            f.write(f"{value}\n")
    return RestoreResult(pid=value)


def run_runc(root: str, bundle: str, cid: str, out: str | None, detach: bool) -> int:
    """`run runc` without a daemon: detached with output to a log, or attached to this terminal."""
    require_root()
    if not detach:
        return runc.run(root, os.path.abspath(bundle), cid, (0, 1, 2), detach=False)
    write_end = runc.relay_to(out or LOG_TEMPLATE.format(id=cid))
    work = tempfile.mkdtemp(prefix="cedana-runc-run-")
    try:
        runc.run(root, os.path.abspath(bundle), cid, (None, write_end, write_end), log_file=os.path.join(work, "log"))
    finally:
        os.close(write_end)
        shutil.rmtree(work, ignore_errors=True)
    return runc.find(root, cid).pid


# --- containerd ---------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ContainerdDumpRequest:
    id: str
    address: str = containerd.DEFAULT_ADDRESS
    namespace: str = containerd.DEFAULT_NAMESPACE
    dir: str | None = None
    name: str | None = None
    compression: str | None = None
    leave_running: bool | None = None
    tcp_established: bool = False
    streams: int = 0


@dataclass(frozen=True, kw_only=True)
class ContainerdRestoreRequest:
    path: str
    id: str
    image: str | None = None
    address: str | None = None
    namespace: str | None = None
    out: str | None = None
    tcp_established: bool = False
    lazy: bool = False


def checkpoint_containerd(settings: Settings, ctr: containerd.Ctr, info: containerd.ContainerInfo, images_dir: str,
                          *, leave_running: bool, tcp_established: bool = False,
                          job: dict | None = None) -> ContainerRecord:
    """The container's checkpoint into images_dir: its task's CRIU images as files, the rest of
    containerd's checkpoint image (writable layer, runtime) in containerd-checkpoint.tar."""
    state = process_state(dumpable_process(info.pid)).to_dict()
    if job:
        state["job"] = job
    record = ContainerRecord(runtime=CONTAINERD, id=info.id, image=info.image, snapshotter=info.snapshotter,
                             runtime_name=info.runtime, spec=info.spec, namespace=ctr.namespace,
                             address=ctr.address, pid=info.pid,
                             tcp_established=tcp_established or state.get("tcp_established", False))
    containerd.checkpoint(ctr, info, images_dir, containerd.CheckpointOptions(
        leave_running=leave_running, tcp_established=record.tcp_established, criu_binary=settings.criu.binary_path))
    with open(os.path.join(images_dir, CONTAINER_FILE), "w") as f:
        json.dump(record.to_dict(), f, indent=2)
    with open(os.path.join(images_dir, STATE_FILE), "w") as f:
        json.dump(state, f, indent=2)
    return record


def dump_containerd(settings: Settings, req: ContainerdDumpRequest) -> DumpResult:
    """`dump containerd ID`: into a directory, an archive, the mount or a bucket, as `dump process`."""
    require_root()
    compression = resolve_compression(settings, req.compression)
    ctr = containerd.Ctr(req.address, req.namespace)
    info = containerd.find_running(ctr, req.id)
    leave_running = settings.criu.leave_running if req.leave_running is None else req.leave_running
    target = req.dir or settings.checkpoint.dir or "/tmp"
    name = _check_name(req.name or f"dump-containerd-{time.time_ns()}")
    return dump_images(settings, lambda d: checkpoint_containerd(
                           settings, ctr, info, d, leave_running=leave_running, tcp_established=req.tcp_established),
                       target, name, compression, kind=CONTAINERD, pid=info.pid,
                       explicit_name=req.name is not None, streams=req.streams)


@contextmanager
def _container_checkpoint(settings: Settings, path: str) -> Iterator[tuple[str, ContainerRecord]]:
    """The checkpoint's local directory (an archive or a bucket's copy unpacked to a temp dir) and its record."""
    if not remote.is_remote(path) and os.path.isdir(path):
        yield path, ContainerRecord.read(path, path)
        return
    with ImagesDir(path, settings) as images:
        yield images.path, ContainerRecord.read(images.path, path)


def restore_containerd(settings: Settings, req: ContainerdRestoreRequest) -> RestoreResult:
    """`restore containerd --path P --id NEW`: the container runs again under containerd as NEW."""
    require_root()
    if req.lazy:
        raise UsageError(LAZY_CONTAINERD)
    with _container_checkpoint(settings, req.path) as (images, record):
        if record.runtime != CONTAINERD:
            raise UsageError(f"{req.path} is a {record.runtime} checkpoint: use `cedana restore {record.runtime}`")
        ctr = containerd.Ctr(req.address or record.address or containerd.DEFAULT_ADDRESS,
                             req.namespace or record.namespace or containerd.DEFAULT_NAMESPACE)
        pid = restore_containerd_images(ctr, images, record, new_id=req.id, image=req.image,
                                        tcp_established=req.tcp_established,
                                        log_path=os.path.abspath(req.out or LOG_TEMPLATE.format(id=req.id)))
    return RestoreResult(pid=pid)


def restore_containerd_images(ctr: containerd.Ctr, images_dir: str, record: ContainerRecord, *, new_id: str,
                              image: str | None = None, tcp_established: bool = False, log_path: str = "") -> int:
    """containerd restores the checkpoint in images_dir as container `new_id`; returns its task's pid."""
    return containerd.restore(ctr, images_dir, containerd.RestoreOptions(
        new_id=new_id, spec=record.spec, image=image, tcp_established=tcp_established or record.tcp_established,
        log_path=log_path))
