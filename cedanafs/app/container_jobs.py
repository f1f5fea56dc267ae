"""Container jobs of the daemon: `run runc`, `manage runc`, `manage containerd`, and `dump job` /
`restore job` of a job whose TYPE is runc or containerd (app.jobs dispatches here by type).

A container job's `cmd` names its container as the runtime's own command line does
(`runc --root R run --bundle B ID`, `ctr -a A -n NS containers info ID`), and its pid is the
container's init; its checkpoints are container checkpoints (app.containers) in the mount.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ..catalog import check_job_name
from ..errors import AlreadyExists, CheckpointError, NotFound, PermissionDenied, UsageError
from ..runtimes import containerd, runc
from .containers import (CONTAINER_FILE, CONTAINERD, LAZY_CONTAINERD, LOG_TEMPLATE, RUNC, ContainerRecord,
                         _container_checkpoint, checkpoint_containerd, checkpoint_runc, into_mount,
                         restore_containerd_images, restore_runc_images, run_runc)
from .process import STATE_FILE, ImagesDir

log = logging.getLogger(__name__)


def runc_cmd(root: str, bundle: str, cid: str) -> list[str]:
    """A runc job's `cmd`: the runc command line that names its container."""
    return ["runc", "--root", root, "run", "--bundle", bundle, cid]


def runc_target(cmd: list[str]) -> tuple[str, str, str]:
    """(root, bundle, id) back from runc_cmd's form."""
    if len(cmd) != 7 or cmd[0] != "runc":
        raise CheckpointError(f"this runc job's record is damaged: {cmd!r}")
    return cmd[2], cmd[5], cmd[6]


def _require_root(caller: Any) -> None:
    if not caller.is_root:
        raise PermissionDenied("runc containers are root's: only root may run, manage, dump or restore them")


def run_runc_job(service: Any, caller: Any, bundle: str, cid: str, root: str, jid: str | None, log_path: str) -> Any:
    """`run runc` through the daemon: a detached container whose output a relay writes to the job's log."""
    from .jobrecord import Job, new_jid, process_start_time

    _require_root(caller)
    jid = check_job_name(jid) if jid else new_jid()
    bundle = os.path.abspath(bundle)
    job = Job(jid=jid, type=RUNC, uid=0, gid=0, cmd=runc_cmd(root, bundle, cid), cwd=bundle, log=log_path,
              host=service.host, created=time.time())
    service.db.insert(job)
    try:
        pid = run_runc(root, bundle, cid, log_path, detach=True)
    except BaseException:
        service.db.delete(jid)
        raise
    job.pid, job.start_time = pid, process_start_time(pid)
    service.db.put(job)
    log.info("job %s: runc container %s running, pid %d", jid, cid, pid)
    return job


def manage_runc_job(service: Any, caller: Any, cid: str, root: str, jid: str | None, log_path: str = "") -> Any:
    """`manage runc ID`: adopt a running runc container as a job; its output goes to log_path once restored."""
    from .jobrecord import Job, new_jid, process_start_time

    _require_root(caller)
    container = runc.find_running(root, cid)
    jid = check_job_name(jid) if jid else new_jid()
    for other in service.db.all():
        if other.type == RUNC and other.pid == container.pid:
            raise AlreadyExists(f"runc container {cid} is already managed as job {other.jid}")
    job = Job(jid=jid, type=RUNC, pid=container.pid, start_time=process_start_time(container.pid), uid=0, gid=0,
              cmd=runc_cmd(root, container.bundle, cid), cwd=container.bundle, log=log_path, host=service.host,
              created=time.time())
    service.db.insert(job)
    log.info("job %s: managing runc container %s (pid %d)", jid, cid, container.pid)
    return job


def dump_runc_job(service: Any, job: Any, leave_running: bool, streams: int = 0) -> str:
    """`dump job` of a runc job: runc checkpoints into a new checkpoint of the job in the mount."""
    root, _bundle, cid = runc_target(job.cmd)
    container = runc.find_running(root, cid)
    job_record = {"jid": job.jid, "type": RUNC, "cmd": job.cmd, "log": job.log, "uid": job.uid}
    return into_mount(service.settings, lambda images: checkpoint_runc(
                          service.settings, container, images, leave_running=leave_running, job=job_record),
                      service.job_dir(job.jid), None, streams, kind=RUNC, pid=container.pid).path


def restore_runc_job(service: Any, caller: Any, job: Any, source: str, lazy: bool, threads: int) -> tuple[int, dict]:
    """`restore job` of a runc job: the container comes back under its id, output to the job's log."""
    _require_root(caller)
    with ImagesDir(source, service.settings, local_copy=not lazy) as images:
        record = ContainerRecord.read(images.path, source)
        state = _state_of(images.path)
        root, cid, bundle = record.root or runc.DEFAULT_ROOT, record.id, record.bundle
        if job is not None:
            root, bundle, cid = runc_target(job.cmd)
        _drop_stopped(root, cid)
        log_path = job.log if job is not None else state.get("job", {}).get("log", "")
        write_end = runc.relay_to(log_path or LOG_TEMPLATE.format(id=cid))
        servers: list = []
        try:
            pid = restore_runc_images(service.settings, images.path, source, record, cid=cid, root=root,
                                      bundle=bundle, stdio=(None, write_end, write_end), lazy=lazy, threads=threads,
                                      servers=servers)
        finally:
            os.close(write_end)
        with service._lock:
            service._page_servers.extend(servers)
    info = dict(state.get("job", {})) | {"type": RUNC, "log": log_path}
    return pid, state | {"cmdline": runc_cmd(root, bundle, cid), "job": info, "uids": [0], "gids": [0]}


def _drop_stopped(root: str, cid: str) -> None:
    """The job's own container, stopped (killed or exited), is removed so its id can be restored."""
    try:
        container = runc.find(root, cid)
    except NotFound:
        return
    if container.status == "stopped":
        runc.delete(root, cid, force=True)


def _state_of(images_dir: str) -> dict:
    try:
        with open(os.path.join(images_dir, STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def containerd_cmd(address: str, namespace: str, cid: str) -> list[str]:
    """A containerd job's `cmd`: the ctr command line that names its container."""
    return ["ctr", "-a", address, "-n", namespace, "containers", "info", cid]


def manage_containerd_job(service: Any, caller: Any, cid: str, address: str, namespace: str,
                          jid: str | None, log_path: str = "") -> Any:
    """`manage containerd ID`: adopt a running containerd container as a job (TYPE containerd); its
    output goes to log_path once restored."""
    from .jobrecord import Job, new_jid, process_start_time

    _require_root(caller)
    info = containerd.find_running(containerd.Ctr(address, namespace), cid)
    jid = check_job_name(jid) if jid else new_jid()
    job = Job(jid=jid, type=CONTAINERD, pid=info.pid, start_time=process_start_time(info.pid), uid=0, gid=0,
              cmd=containerd_cmd(address, namespace, cid), cwd="/", log=log_path, host=service.host,
              created=time.time())
    service.db.insert(job)
    log.info("job %s: managing containerd container %s (pid %d)", jid, cid, info.pid)
    return job


def dump_containerd_job(service: Any, job: Any, leave_running: bool, streams: int = 0) -> str:
    """`dump job` of a containerd job: its checkpoint goes into a new checkpoint of the job in the mount."""
    address, namespace, cid = job.cmd[2], job.cmd[4], job.cmd[7]
    ctr = containerd.Ctr(address, namespace)
    info = containerd.find_running(ctr, cid)
    record = {"jid": job.jid, "type": CONTAINERD, "cmd": job.cmd, "log": job.log, "uid": job.uid}
    return into_mount(service.settings, lambda images: checkpoint_containerd(
                          service.settings, ctr, info, images, leave_running=leave_running, job=record),
                      service.job_dir(job.jid), None, streams, kind=CONTAINERD, pid=info.pid).path


def restore_containerd_job(service: Any, caller: Any, job: Any, source: str) -> tuple[int, dict]:
    """`restore job` of a containerd job: the container comes back under its id (a stopped record
    of it is removed first)."""
    _require_root(caller)
    with _container_checkpoint(service.settings, source) as (images, record):
        address, namespace, cid = record.address, record.namespace, record.id
        if job is not None:
            address, namespace, cid = job.cmd[2], job.cmd[4], job.cmd[7]
        ctr = containerd.Ctr(address, namespace)
        ctr.ping()
        if ctr.exists(cid) and ctr.task(cid)[1] in ("", "stopped"):
            ctr.remove(cid)
        state = _state_of(images)
        recorded = state.get("job", {})
        log_path = (job.log if job is not None else recorded.get("log", "")) or \
            LOG_TEMPLATE.format(id=job.jid if job is not None else recorded.get("jid") or cid)
        pid = restore_containerd_images(ctr, images, record, new_id=cid, log_path=log_path)
    info = dict(state.get("job", {})) | {"type": CONTAINERD, "log": log_path}
    return pid, state | {"cmdline": containerd_cmd(address, namespace, cid), "job": info, "uids": [0], "gids": [0]}


def dump_container_job(service: Any, job: Any, leave_running: bool, streams: int = 0) -> str:
    """`dump job` of a container job, by its runtime."""
    dump = dump_runc_job if job.type == RUNC else dump_containerd_job
    return dump(service, job, leave_running, streams)


def restore_container_job(service: Any, caller: Any, job: Any, source: str, lazy: bool,
                          threads: int) -> tuple[int, dict]:
    """`restore job` of a container job, by its runtime (the job's type, else the checkpoint's record)."""
    runtime = job.type if job is not None else _runtime_of(source)
    if runtime == RUNC:
        return restore_runc_job(service, caller, job, source, lazy, threads)
    if lazy:
        raise UsageError(LAZY_CONTAINERD)
    return restore_containerd_job(service, caller, job, source)


def is_container_job(job: Any, source: str) -> bool:
    """A job restore of a container: by the job's type, or (no record here) by its checkpoint."""
    if job is not None:
        return job.type in (RUNC, CONTAINERD)
    return _runtime_of(source) in (RUNC, CONTAINERD)


def _runtime_of(source: str) -> str:
    try:
        with open(os.path.join(source, CONTAINER_FILE)) as f:
            return json.load(f).get("runtime", "")
    except (OSError, ValueError, AttributeError):
        return ""
