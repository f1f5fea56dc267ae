"""runc containers: find one (state, bundle, init pid), checkpoint it into an images directory with
`runc checkpoint`, bring it back with `runc restore`, start one with `runc run`.

runc calls CRIU itself; the CRIU that criu.find_criu picks is put first on runc's PATH. A
container's stdio must be pipes (or /dev/null) for CRIU to dump it: a file outside the container's
mount namespace cannot be, so callers hand runc pipes (see `relay_to`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

from .. import criu
from ..errors import AlreadyExists, CriuError, NotFound, NotReady, UsageError

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/run/runc"
CHECKPOINT_LOG = "dump.log"
RESTORE_LOG = "restore.log"


@dataclass(frozen=True)
class Container:
    """What `runc state` says of one container."""

    id: str
    root: str
    pid: int
    status: str
    bundle: str
    rootfs: str


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    id: str
    root: str
    images_dir: str
    work_dir: str
    leave_running: bool = False
    tcp_established: bool = False
    file_locks: bool = False
    shell_job: bool = False
    ext_unix_sk: bool = False


@dataclass(frozen=True, kw_only=True)
class RestoreOptions:
    id: str
    root: str
    bundle: str
    images_dir: str
    work_dir: str
    detach: bool = True
    tcp_established: bool = False
    file_locks: bool = False
    shell_job: bool = False
    ext_unix_sk: bool = False
    lazy_pages: bool = False


def find_runc() -> str:
    found = shutil.which("runc") or next((p for p in ("/usr/sbin/runc", "/usr/bin/runc") if os.access(p, os.X_OK)),
                                         None)
    if not found:
        raise NotReady("runc is not installed: run `make setup` (Debian package runc)")
    return found


def _env(criu_binary: str = "") -> dict[str, str]:
    """runc finds CRIU on PATH: the one the criu layer chose comes first."""
    crius = os.path.dirname(criu.find_criu(criu_binary))
    return {**os.environ, "PATH": f"{crius}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def _runc(root: str, args: Sequence[str], criu_binary: str = "", log_file: str = "",
          **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    logging_args = ["--log", log_file, "--log-format", "text"] if log_file else []
    return subprocess.run([find_runc(), "--root", root, *logging_args, *args], text=True, env=_env(criu_binary),
                          **kwargs)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "level=error" in ln or "level=fatal" in ln] or lines
    if not lines:
        return "no message"
    line = lines[-1]
    if 'msg="' in line:  # runc's logrus format: time=... level=error msg="..."
        line = line.split('msg="', 1)[1].rsplit('"', 1)[0]
    return line.replace("\\n", "; ")


def _has_error(text: str) -> bool:
    return any("level=error" in ln or "level=fatal" in ln for ln in text.splitlines())


def find(root: str, cid: str) -> Container:
    """The container `cid` under runc root `root`; NotFound when runc does not know it."""
    if not cid or "/" in cid:
        raise UsageError(f"invalid container id {cid!r}")
    result = _runc(root, ["state", cid])
    if result.returncode != 0:
        raise NotFound(f"no runc container {cid!r} under --root {root} (see `runc --root {root} list`)")
    state = json.loads(result.stdout)
    return Container(id=state["id"], root=root, pid=int(state.get("pid") or 0), status=state["status"],
                     bundle=state.get("bundle", ""), rootfs=state.get("rootfs", ""))


def exists(root: str, cid: str) -> bool:
    try:
        find(root, cid)
    except NotFound:
        return False
    return True


def find_running(root: str, cid: str) -> Container:
    container = find(root, cid)
    if container.status != "running":
        raise UsageError(f"runc container {cid} is not running ({container.status}); nothing to checkpoint")
    return container


def _log_errors(path: str, lines: int = 2) -> str:
    try:
        with open(path, errors="replace") as f:
            found = [ln.strip() for ln in f if "Error" in ln and "RLIMIT_NOFILE" not in ln]
    except OSError:
        return ""
    return "; ".join(found[-lines:])


def _flags(opts: CheckpointOptions | RestoreOptions) -> list[str]:
    names = {"tcp_established": "--tcp-established", "file_locks": "--file-locks", "shell_job": "--shell-job",
             "ext_unix_sk": "--ext-unix-sk"}
    return [flag for name, flag in names.items() if getattr(opts, name)]


def checkpoint(opts: CheckpointOptions, criu_binary: str = "") -> None:
    """`runc checkpoint` into opts.images_dir; on failure the container runs on (runc resumes it)."""
    args = ["checkpoint", "--image-path", opts.images_dir, "--work-path", opts.work_dir, *_flags(opts)]
    if opts.leave_running:
        args.append("--leave-running")
    result = _runc(opts.root, [*args, opts.id], criu_binary)
    if result.returncode != 0:
        why = _log_errors(os.path.join(opts.work_dir, CHECKPOINT_LOG)) or _last_line(result.stderr)
        raise CriuError(f"runc checkpoint of {opts.id} failed: {why}")
    log.info("runc container %s checkpointed into %s", opts.id, opts.images_dir)


def restore(opts: RestoreOptions, stdio: tuple[int | None, int | None, int | None] = (None, None, None),
            criu_binary: str = "") -> int:
    """`runc restore` of opts.id from opts.images_dir; returns the restored init's exit code when
    attached (detach=False), else 0 once it runs. A failed restore leaves no container behind."""
    if exists(opts.root, opts.id):
        raise AlreadyExists(f"a runc container {opts.id!r} already exists under --root {opts.root};"
                            " choose another --id or delete it first")
    args = ["restore", "--image-path", opts.images_dir, "--work-path", opts.work_dir, "--bundle", opts.bundle,
            *_flags(opts)]
    if opts.detach:
        args.append("--detach")
    if opts.lazy_pages:
        args.append("--lazy-pages")
    stdin, stdout, stderr = stdio
    runc_log = os.path.join(opts.work_dir, "runc.log")  # runc's own errors: its stderr is the container's
    result = _runc(opts.root, [*args, opts.id], criu_binary, capture_output=False, log_file=runc_log,
                   stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    # Attached, a non-zero code is the container's own, unless runc itself logged an error.
    failed = result.returncode != 0 and (opts.detach or _has_error(_read(runc_log)))
    if failed:
        _remove_half_made(opts.root, opts.id)
        why = _log_errors(os.path.join(opts.work_dir, RESTORE_LOG)) or _last_line(_read(runc_log))
        raise CriuError(f"runc restore of {opts.id} failed: {why}")
    log.info("runc container %s restored from %s", opts.id, opts.images_dir)
    return result.returncode


def _remove_half_made(root: str, cid: str) -> None:
    if exists(root, cid):
        _runc(root, ["delete", "--force", cid])


def run(root: str, bundle: str, cid: str, stdio: tuple[int | None, int | None, int | None],
        detach: bool = True, log_file: str = "") -> int:
    """`runc run [--detach]`: returns runc's exit code (the container's when attached)."""
    if exists(root, cid):
        raise AlreadyExists(f"a runc container {cid!r} already exists under --root {root}")
    if not os.path.isfile(os.path.join(bundle, "config.json")):
        raise NotFound(f"{bundle} is not an OCI bundle (no config.json)")
    stdin, stdout, stderr = stdio
    args = ["run", "--bundle", bundle, *(["--detach"] if detach else []), cid]
    result = _runc(root, args, capture_output=False, log_file=log_file,
                   stdin=stdin if stdin is not None else subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    if result.returncode != 0 and detach:
        _remove_half_made(root, cid)
        why = _last_line(_read(log_file)) if log_file else f"exit {result.returncode}"
        raise UsageError(f"runc run {cid} failed: {why}")
    return result.returncode


def delete(root: str, cid: str, force: bool = False) -> None:
    result = _runc(root, ["delete", *(["--force"] if force else []), cid])
    if result.returncode != 0:
        raise UsageError(f"runc delete {cid} failed: {_last_line(result.stderr)}")


def relay_to(log_path: str) -> int:
    """A pipe whose read end a detached `cat` copies into log_path; returns its write end.

    The relay outlives this process (its own session, reparented at once) and ends when the
    last writer, the container, closes the pipe.
    """
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write the container's output to {log_path}: {exc.strerror}") from None
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        subprocess.run(["setsid", "--fork", "cat"], stdin=read_end, stdout=log_fd, stderr=subprocess.DEVNULL,
                       check=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
        os.close(log_fd)
    return write_end
