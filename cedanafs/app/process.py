"""Use cases `dump process` and `restore process`: the seed's archive layout over the criu layer.

A dump goes to a hidden staging directory beside its destination and only appears under its
final name once CRIU succeeded and (for archives) the archive is complete, so a failed dump
leaves nothing behind and the process running. A restore never modifies the checkpoint.

This is also the one checkpoint/restore path of the job commands (app/jobs.py): `criu_dump`
takes the same flags, records what was asked in process_state.json, writes CRIU's log locally
and copies it into the checkpoint once (a failed dump's log is kept under the state dir's
failed-dumps/); `restore_options` turns the recorded flags and the restore's own into CRIU's
options for an eager restore and a lazy one alike.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import criu
from ..criu import lazy as criu_lazy
from ..config import COMPRESSIONS, Settings
from ..errors import AlreadyExists, CheckpointError, CriuError, NotFound, PermissionDenied, UsageError
from ..spool import WRITER
from . import mount as mountapp
from . import remote

# What only some dumps and restores use is imported where they use it, not by every `cedana dump
# process` or `restore process` before it starts: the mount's and the spool's capture, the
# archive formats, O_DIRECT writes (ctypes), the streamed and terminal restores.
if TYPE_CHECKING:
    from .capture import Report

log = logging.getLogger(__name__)

STATE_FILE = "process_state.json"
DUMP_LOG = "criu-dump.log"
RESTORE_LOG = "criu-restore.log"
FAILED_DUMPS = "failed-dumps"
KEEP_FAILED_DUMPS = 5


@dataclass(frozen=True, kw_only=True)
class CriuFlags:
    """The CRIU flags dump and restore share (DESIGN.md section 2)."""

    tcp_established: bool = False
    file_locks: bool = False
    external: tuple[str, ...] = ()
    shell_job: bool | None = None
    link_remap: bool = False
    criu_opts: dict[str, Any] = field(default_factory=dict)
    streams: int = 0  # parallel transfers to/from the store (0: config checkpoint.streams)


@dataclass(frozen=True, kw_only=True)
class DumpRequest(CriuFlags):
    """What a dump (of a process or a job) was asked: the process, where, its name and archive format."""

    pid: int
    dir: str | None = None
    name: str | None = None
    compression: str | None = None
    leave_running: bool | None = None
    skip_in_flight: bool = False


@dataclass(frozen=True)
class DumpResult:
    """A finished dump: where it is, how large, and how long it took."""

    path: str
    pid: int
    name: str
    compression: str
    size: int
    duration: float
    # Into the mount: seconds until CRIU was done (the process released) and until committed.
    captured_after: float | None = None
    committed_after: float | None = None
    via: str | None = None  # "spool" (CRIU wrote locally, the store took it) or "mount" (through FUSE)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class RestoreRequest(CriuFlags):
    """What a restore (of a process or a job) was asked: the checkpoint, and how to restore it."""

    path: str
    no_server: bool = False
    lazy: bool = False
    pid_file: str | None = None
    tcp_close: bool = False
    leave_stopped: bool = False


@dataclass(frozen=True)
class RestoreResult:
    """A restore: the root PID, and with --no-server the process's exit code."""

    pid: int
    exit_code: int | None = None


def require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("cedana must run as root to checkpoint or restore processes (CRIU needs it)")


def parse_criu_opts(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--criu-opts is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("--criu-opts must be a JSON object of CRIU RPC options")
    return value


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or name.startswith("."):
        raise UsageError(f"invalid checkpoint name {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def _check_parent(parent: str) -> str:
    if not os.path.exists(parent):
        raise NotFound(f"checkpoint directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise UsageError(f"checkpoint directory {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionDenied(f"checkpoint directory {parent} is not writable")
    return os.path.abspath(parent)


def _dump_options(req: DumpRequest, settings: Settings, images_dir: str, state, leave_stopped: bool = False
                  ) -> criu.DumpOptions:
    leave_running = settings.criu.leave_running if req.leave_running is None else req.leave_running
    extra = dict(req.criu_opts) | ({"leave_stopped": True} if leave_stopped and not leave_running else {})
    return criu.DumpOptions(
        images_dir=images_dir, log_file=DUMP_LOG, pid=req.pid, leave_running=leave_running,
        shell_job=state.shell_job if req.shell_job is None else req.shell_job,
        tcp_established=req.tcp_established or state.tcp_established,
        skip_in_flight=req.skip_in_flight, file_locks=req.file_locks, link_remap=req.link_remap,
        external=tuple(req.external), extra=extra,
    )


def asked_flags(o: criu.DumpOptions) -> dict[str, Any]:
    """What the dump was asked (recorded in process_state.json, used again by every restore)."""
    return {"shell_job": o.shell_job, "tcp_established": o.tcp_established, "file_locks": o.file_locks,
            "link_remap": o.link_remap, "ext_unix_sk": o.ext_unix_sk, "external": list(o.external),
            "skip_in_flight": o.skip_in_flight, "leave_running": o.leave_running}


def failed_dumps_dir(settings: Settings) -> Path:
    """Where the CRIU logs of failed dumps are kept: failed-dumps/ beside the catalog (db.path)."""
    return Path(settings.db.path).parent / FAILED_DUMPS


def keep_failed_log(settings: Settings, log_path: str, pid: int) -> str:
    """Copy a failed dump's CRIU log to failed-dumps/ (the last few are kept); returns its new path."""
    where = failed_dumps_dir(settings)
    dest = where / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{time.time_ns() % 10**9:09d}-pid{pid}.log"
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copyfile(log_path, dest)
        os.chmod(dest, 0o600)
        for old in sorted(where.glob("*.log"))[:-KEEP_FAILED_DUMPS]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("cannot keep the CRIU log of the failed dump of PID %d: %s", pid, exc)
        return "not kept"
    return str(dest)


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    return os.path.getsize(path)


def owner_of(proc) -> tuple[int, int]:
    """Who a checkpoint belongs to: the dumped process's real uid and gid."""
    return proc.uids().real, proc.gids().real


def owner_meta(proc) -> dict[str, str]:
    """The owner as manifest meta (the mount shows the checkpoint as this uid's, 0700/0600)."""
    uid, gid = owner_of(proc)
    return {"uid": str(uid), "gid": str(gid)}


def _make_private(images_dir: str, owner: tuple[int, int]) -> None:
    """An images dir holds the process's memory: 0700, its files 0600, all the process owner's."""
    for entry in os.listdir(images_dir):
        path = os.path.join(images_dir, entry)
        if not os.path.islink(path):
            os.chmod(path, 0o600)
        os.chown(path, *owner, follow_symlinks=False)
    os.chmod(images_dir, 0o700)
    os.chown(images_dir, *owner)


def _publish(staging: str, final: str, compression: str, owner: tuple[int, int] = (0, 0),
             remove: bool = True) -> None:
    """Give the finished dump its final name without ever replacing an existing one.

    An archive is made 0600 and the process owner's before it has any content. With remove, the
    staging dir goes once archived (its blocks freed as they are archived); without, the caller
    removes it (a spool dir: in the background)."""
    if compression == "none":
        if os.path.exists(final):
            raise AlreadyExists(f"{final} already exists")
        os.rename(staging, final)
        return
    tmp = f"{os.path.dirname(final)}/.{os.path.basename(final)}.partial-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, *owner)
            from ..fsio import DirectWriter
            from . import archive

            with DirectWriter(fd) as out:  # around the page cache: cheaper here than through it
                archive.write_archive(staging, out, compression, consume=remove)  # type: ignore[arg-type]
            os.fsync(fd)  # the data is on disk already (O_DIRECT): the tail and the metadata
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)  # fails if final appeared meanwhile: no silent overwrite
        except FileExistsError:
            raise AlreadyExists(f"{final} already exists") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if remove:
            shutil.rmtree(staging, ignore_errors=True)


def resolve_compression(settings: Settings, requested: str | None) -> str:
    """The archive format of a dump: as asked, else config checkpoint.compression, else none."""
    compression = requested or settings.checkpoint.compression or "none"
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    return compression


def dump_process(settings: Settings, req: DumpRequest, report: Report | None = None) -> DumpResult:
    """Dump process req.pid to req.dir; `report` hears a dump into the mount's progress."""
    require_root()
    compression = resolve_compression(settings, req.compression)
    from .procinfo import dumpable_process

    proc = dumpable_process(req.pid)
    target = req.dir or settings.checkpoint.dir or "/tmp"
    name = _check_name(req.name or f"dump-process-{time.time_ns()}")
    binary = criu.find_criu(settings.criu.binary_path)
    if remote.is_remote(target):
        return _dump_to_bucket(settings, req, binary, proc, target, name, compression)
    if mountapp.mount_of(target) is not None:
        _check_mount_target(target, req.compression)
        return _dump_into_mount(settings, req, binary, proc, target, report)
    parent = _check_parent(target)
    final = os.path.join(parent, _archive_name(name, compression))
    if os.path.lexists(final):
        raise AlreadyExists(f"{final} already exists; choose another --name")
    started = time.monotonic()
    owner = owner_of(proc)  # before CRIU: a dump without --leave-running ends the process
    if compression == "none" or not _dump_archive_via_spool(settings, req, binary, proc, final, compression, owner):
        staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=parent)
        try:
            criu_dump(binary, settings, req, proc, staging)
            _make_private(staging, owner)
            _publish(staging, final, compression, owner)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return DumpResult(path=final, pid=req.pid, name=name, compression=compression,
                      size=_size(final), duration=time.monotonic() - started)


def _archive_name(name: str, compression: str) -> str:
    """archive.archive_name, without loading the archive formats (ISA-L, tarfile) for an images dir."""
    if compression == "none":
        return name
    from . import archive

    return archive.archive_name(name, compression)


def _dump_archive_via_spool(settings: Settings, req: DumpRequest, binary: str, proc, final: str, compression: str,
                            owner: tuple[int, int]) -> bool:
    """CRIU's images for an archive go to the spool (config spool.dir, tmpfs by default) when it can
    hold them: images that live only until they are compressed are then never written back to disk,
    nor their blocks freed there after. False (nothing done) if the spool cannot hold the dump or
    ran out of space during it (the process is running again then, as after any failed dump)."""
    from . import capture

    with capture.spool_dir(settings, capture.predicted_size(req.pid)) as spool:
        if spool is None:
            return False
        with open(os.path.join(spool, WRITER), "w") as f:  # killed outright: a later dump removes the dir
            f.write(f"{os.getpid()}\n")
        images = os.path.join(spool, "images")
        os.mkdir(images, 0o700)
        try:
            criu_dump(binary, settings, req, proc, images)
        except CriuError:
            if not capture.nearly_full(spool):
                raise
            log.warning("the spool %s ran out of space; dumping beside %s instead", settings.spool.dir, final)
            return False
        _make_private(images, owner)
        _publish(images, final, compression, owner, remove=False)  # the spool goes in the background
    return True


def _check_mount_target(target: str, compression: str | None) -> None:
    """A dump into the mount goes into a job's directory, MOUNT/jobs/<JOB>, as an images directory."""
    mp = mountapp.mount_of(target)
    parts = os.path.relpath(os.path.abspath(target), mp).split(os.sep)
    if parts[:1] != ["jobs"] or len(parts) != 2:
        raise UsageError(f"--dir {target}: checkpoints in the mount go into a job's directory:"
                         f" --dir {os.path.join(mp, 'jobs', '<JOB>')}")
    if compression not in (None, "none"):
        raise UsageError(f"--compression {compression}: the mount keeps checkpoints as images directories and"
                         " compresses them itself (config store.codec); leave --compression out")


def criu_dump(binary: str, settings: Settings, req: DumpRequest, proc, images_dir: str, *,
              record: dict | None = None, leave_stopped: bool = False) -> dict:
    """The dump of process and job commands alike: CRIU into images_dir, then process_state.json.

    CRIU's log goes to a local work dir and is copied into the checkpoint once at the end (never
    written into the mount a line at a time); a failed dump's log is kept in failed-dumps/ and the
    error quotes its cause. Returns the state record written.
    """
    from .procinfo import process_state

    state = process_state(proc)
    opts = _dump_options(req, settings, images_dir, state, leave_stopped)
    work = tempfile.mkdtemp(prefix="cedana-dump-")
    try:
        criu.dump(binary, replace(opts, work_dir=work))
        shutil.copyfile(os.path.join(work, DUMP_LOG), os.path.join(images_dir, DUMP_LOG))
    except criu.CriuFailed as exc:
        kept = keep_failed_log(settings, exc.log_path, req.pid)
        log.warning("dump of PID %d failed: %s (CRIU log: %s)", req.pid, exc.reason, kept)
        raise CriuError(f"CRIU {exc.action} failed: {exc.reason} (log: {kept})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = state.to_dict() | {"shell_job": opts.shell_job, "tcp_established": opts.tcp_established,
                              "criu": asked_flags(opts)} | (record or {})
    with open(os.path.join(images_dir, STATE_FILE), "w") as f:
        json.dump(data, f, indent=2)
    return data


def _dump_into_mount(settings: Settings, req: DumpRequest, binary: str, proc, job_dir: str,
                     report: Report | None = None) -> DumpResult:
    """A new checkpoint of the mount's job dir: CRIU writes to the spool, the store takes it from
    there (capture.py); a failure leaves no checkpoint and the process running."""
    from . import capture

    if req.name is not None:
        _check_name(req.name)
    started = time.monotonic()
    leave_running = settings.criu.leave_running if req.leave_running is None else req.leave_running
    done = capture.dump_into_mount(
        settings, job_dir, req.name, req.streams or settings.checkpoint.streams, pid=req.pid,
        leave_running=leave_running,
        run_dump=lambda images, stopped: criu_dump(binary, settings, req, proc, images, leave_stopped=stopped),
        kind="process", meta={"pid": str(req.pid), **owner_meta(proc)}, report=report)
    return DumpResult(path=done.path, pid=req.pid, name=os.path.basename(done.path), compression="none",
                      size=_size(done.path), duration=time.monotonic() - started,
                      captured_after=round(done.captured_after, 3), committed_after=round(done.committed_after, 3),
                      via=done.via)


def _dump_to_bucket(settings: Settings, req: DumpRequest, binary: str, proc, url: str, name: str,
                    compression: str) -> DumpResult:
    from ..streamer import open_backend

    backend = open_backend(url, settings)
    remote.ensure_absent(backend, url, name, compression)  # before CRIU stops the process
    started = time.monotonic()
    staging = tempfile.mkdtemp(prefix=f"cedana-dump-{name}-")
    try:
        criu_dump(binary, settings, req, proc, staging)
        size = _size(staging)
        path = remote.upload_checkpoint(backend, url, staging, name, compression)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DumpResult(path=path, pid=req.pid, name=name, compression=compression, size=size,
                      duration=time.monotonic() - started)


# --- restore ---


class ImagesDir:
    """An images dir to restore from: the given dir, or a private temp dir holding an unpacked
    archive, or (a checkpoint in the mount) a spool dir the mount server copied it into."""

    def __init__(self, path: str, settings: Settings, local_copy: bool = True):
        self.settings = settings
        self.source = path
        self.temp: str | None = None
        self.path = path
        self.local_copy = local_copy  # False: a lazy restore serves pages from the mount itself
        self._stack = ExitStack()

    def __enter__(self) -> "ImagesDir":
        if remote.is_remote(self.source):
            return self._unpack(lambda dest: remote.download_checkpoint(self.settings, self.source, dest))
        if not os.path.lexists(self.source):
            raise NotFound(f"checkpoint {self.source} does not exist")
        if os.path.isdir(self.source):
            if not os.path.exists(os.path.join(self.source, "inventory.img")):
                raise CheckpointError(f"{self.source} is not a CRIU images directory (no inventory.img)")
            if self.local_copy and mountapp.mount_of(self.source) is not None:
                from . import capture

                self.path = self._stack.enter_context(capture.materialized(self.settings, self.source))
            return self
        return self._unpack(self._extract_local)

    def _extract_local(self, dest: str) -> None:
        from . import archive

        with open(self.source, "rb") as src:
            archive.extract_archive(src, dest, self.source)

    def _unpack(self, fill: Callable[[str], None]) -> "ImagesDir":
        """Fill a private temp dir with the images; on any failure, remove it and re-raise."""
        from ..fsio import keep_freed_blocks

        keep_freed_blocks()
        self.temp = tempfile.mkdtemp(prefix="cedana-restore-images-")
        try:
            fill(self.temp)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.path = self.temp
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)


def read_state(images_dir: str) -> dict:
    try:
        with open(os.path.join(images_dir, STATE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _pid_holder(pid: int, wait: float = 3.0) -> str | None:
    """What holds pid, or None if it is free; a zombie of the dumped process gets a moment to be reaped."""
    if not os.path.exists(f"/proc/{pid}"):
        return None  # the usual answer, without loading psutil
    import psutil

    deadline = time.monotonic() + wait
    while True:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE and time.monotonic() > deadline:
                return f"a zombie its parent, PID {proc.ppid()}, has not reaped"
            if proc.status() != psutil.STATUS_ZOMBIE:
                return " ".join(proc.cmdline()) or proc.name()
        except psutil.ZombieProcess:
            pass  # became a zombie between two calls: look again
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return "another process"
        time.sleep(0.05)


def check_pids_free(images_dir: str) -> None:
    for pid in criu.image_pids(images_dir):
        holder = _pid_holder(pid)
        if holder is not None:
            raise AlreadyExists(
                f"PID {pid} is in use ({holder}); the checkpointed process needs it:"
                " stop the original process first"
            )


def _stdio_inheritance(state: dict) -> tuple[criu.StdioMapping, ...]:
    """Hand our stdio to the restored tree where it had pipes, so `--no-server` attaches it."""
    maps = []
    for fd_text, target in state.get("stdio", {}).items():
        if target.startswith("pipe:"):
            dup = os.dup(int(fd_text))
            maps.append(criu.StdioMapping(key=target, fd=dup))
    return tuple(maps)


def _wait_child(pid: int) -> int:
    """Wait for the restored child, passing on the signals meant for it; return a shell-style code."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {s: signal.signal(s, lambda sig, _f: os.kill(pid, sig)) for s in forwarded}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def restore_options(req: RestoreRequest, images: str, work: str, state: dict, *, inherit=(),
                    sibling: bool = False, default_shell_job: bool = True) -> criu.RestoreOptions:
    """CRIU's restore options: what the dump recorded, unless this restore says otherwise."""
    asked = state.get("criu") or {}
    shell_job = state.get("shell_job", default_shell_job) if req.shell_job is None else req.shell_job
    return criu.RestoreOptions(
        images_dir=images, work_dir=work, log_file=RESTORE_LOG, shell_job=shell_job,
        tcp_established=req.tcp_established or state.get("tcp_established", False),
        file_locks=req.file_locks or asked.get("file_locks", False),
        link_remap=req.link_remap or asked.get("link_remap", False),
        ext_unix_sk=asked.get("ext_unix_sk", False),
        external=tuple(req.external) or tuple(asked.get("external") or ()),
        tcp_close=req.tcp_close, leave_stopped=req.leave_stopped, extra=dict(req.criu_opts),
        rst_sibling=sibling, inherit=tuple(inherit),
    )


def streams_of(settings: Settings, streams: int = 0) -> int:
    """Parallel transfers: --streams, else config checkpoint.streams, else 8."""
    return streams or settings.checkpoint.streams or 8


def _restore_lazy(settings: Settings, req: RestoreRequest) -> RestoreResult:
    """Lazy pages: the process runs once its small images are read; memory follows on fault."""
    if mountapp.mount_of(req.path) is None or not os.path.isdir(req.path):
        raise UsageError("--lazy restores from a checkpoint directory in a cedanafs mount")
    if req.no_server:
        raise UsageError("--lazy cannot be combined with --no-server")
    state = read_state(req.path)
    check_pids_free(req.path)
    work = tempfile.mkdtemp(prefix="cedana-lazy-")
    options = restore_options(req, os.path.abspath(req.path), work, state)
    restored = mountapp.lazy_restore(req.path, work, options=options, criu=settings.criu.binary_path,
                                     threads=streams_of(settings, req.streams))
    if req.pid_file:
        with open(req.pid_file, "w") as f:
            f.write(f"{restored.pid}\n")
    return RestoreResult(pid=restored.pid)


def _restore_streamed(settings: Settings, req: RestoreRequest, binary: str) -> int | None:
    """An eager restore of a checkpoint in the mount with `criu restore --stream`: the mount
    server feeds CRIU the images while it restores (capture.served). None where that cannot be
    (not in a mount, options only the RPC takes, a server that cannot serve): restore otherwise."""
    path = req.path
    if req.no_server or remote.is_remote(path) or not os.path.isdir(path) or mountapp.mount_of(path) is None:
        return None
    if not os.path.exists(os.path.join(path, "inventory.img")):
        return None  # ImagesDir says what is wrong with it
    state = read_state(path)
    opts = restore_options(req, path, "", state)
    try:
        criu_lazy.restore_args(opts)  # everything asked has a command line flag
    except UsageError:
        return None
    check_pids_free(path)
    from ..criu import stream as criu_stream
    from . import capture

    with capture.served(path) as images:
        if images is None:
            return None
        work = tempfile.mkdtemp(prefix="cedana-restore-")
        try:
            pid = criu_stream.restore_streamed(binary, replace(opts, images_dir=images, work_dir=work))
        except criu.CriuFailed:
            why = mountapp.read_error(path)
            if why:  # the store could not give a chunk: say which
                raise CheckpointError(f"cannot read the images of {path} from the store: {why};"
                                      " nothing was restored") from None
            raise
    shutil.rmtree(work, ignore_errors=True)
    return pid


def restore_process(settings: Settings, req: RestoreRequest) -> RestoreResult:
    require_root()
    if req.lazy:
        return _restore_lazy(settings, req)
    binary = criu.find_criu(settings.criu.binary_path)
    pid = _restore_streamed(settings, req, binary)
    if pid is not None:
        if req.pid_file:
            with open(req.pid_file, "w") as f:
                f.write(f"{pid}\n")
        return RestoreResult(pid=pid)
    with ImagesDir(req.path, settings) as images:
        state = read_state(images.path)
        check_pids_free(images.path)
        # CRIU writes its log into the work dir; keep it local so the checkpoint is never modified.
        work = tempfile.mkdtemp(prefix="cedana-restore-")
        inherit = _stdio_inheritance(state) if req.no_server else ()
        try:
            opts = restore_options(req, images.path, work, state, inherit=inherit, sibling=req.no_server)
            if req.no_server and opts.shell_job:  # the caller's terminal becomes the restored tree's
                from ..criu import terminal as criu_terminal

                pid = criu_terminal.restore_in_terminal(binary, opts)
            else:
                pid = criu.restore(binary, opts)
        finally:
            for m in inherit:
                os.close(m.fd)
    shutil.rmtree(work, ignore_errors=True)
    if req.pid_file:
        with open(req.pid_file, "w") as f:
            f.write(f"{pid}\n")
    if req.no_server:
        return RestoreResult(pid=pid, exit_code=_wait_child(pid))
    return RestoreResult(pid=pid)
