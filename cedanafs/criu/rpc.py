"""Dump and restore options, dumps by the criu command line (or `criu swrk` for RPC-only options),
restores through pycriu's `criu swrk` RPC, with CRIU's failures turned into sentences.

CRIU's RPC only reports an errno and its command line an exit status; the reason is in its log,
so errors quote the log's first cause lines and name the log file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import CriuError, UsageError

log = logging.getLogger(__name__)

# Fields that --criu-opts may not set, because cedanafs owns them.
_RESERVED = {"images_dir_fd", "images_dir", "work_dir_fd", "pid", "log_file", "rst_sibling", "inherit_fd"}


@dataclass(frozen=True)
class StdioMapping:
    """Give the restored tree one of our fds in place of a resource it had (CRIU's inherit-fd)."""

    key: str
    fd: int


@dataclass(frozen=True)
class CommonOptions:
    """The options a dump and a restore share: the images, CRIU's work dir and log, its flags."""

    images_dir: str
    work_dir: str | None = None
    log_file: str = "criu.log"
    log_level: int = 4
    shell_job: bool = False
    tcp_established: bool = False
    file_locks: bool = False
    link_remap: bool = False
    ext_unix_sk: bool = False
    external: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DumpOptions(CommonOptions):
    """A dump's own: the tree's root PID, whether it keeps running, in-flight TCP connections."""

    pid: int = 0
    leave_running: bool = False
    skip_in_flight: bool = False


@dataclass(frozen=True)
class RestoreOptions(CommonOptions):
    """A restore's own: TCP closed, the tree left stopped or made our child, lazy pages, inherited fds."""

    tcp_close: bool = False
    leave_stopped: bool = False
    rst_sibling: bool = False
    lazy_pages: bool = False
    inherit: tuple[StdioMapping, ...] = ()


def _inheritable_dir_fd(stack: ExitStack, path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    stack.callback(os.close, fd)
    # pycriu forks and execs `criu swrk`; only non-CLOEXEC fds reach it.
    os.set_inheritable(fd, True)
    return fd


def _apply_extra(opts: Any, extra: dict[str, Any]) -> None:
    for name, value in extra.items():
        if name in _RESERVED:
            raise UsageError(f"--criu-opts: {name!r} is set by cedana and cannot be overridden")
        if name not in opts.DESCRIPTOR.fields_by_name:
            raise UsageError(f"--criu-opts: unknown CRIU option {name!r}")
        try:
            target = getattr(opts, name)
            if hasattr(target, "extend") and isinstance(value, list):
                target.extend(value)
            else:
                setattr(opts, name, value)
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"--criu-opts: bad value for {name!r}: {exc}") from None


def _common(stack: ExitStack, opts: Any, o: CommonOptions) -> str:
    opts.images_dir_fd = _inheritable_dir_fd(stack, o.images_dir)
    work_dir = o.work_dir or o.images_dir
    if o.work_dir:
        opts.work_dir_fd = _inheritable_dir_fd(stack, o.work_dir)
    opts.log_file = o.log_file
    opts.log_level = o.log_level
    opts.shell_job = o.shell_job
    opts.tcp_established = o.tcp_established
    opts.file_locks = o.file_locks
    opts.link_remap = o.link_remap
    opts.ext_unix_sk = o.ext_unix_sk
    opts.external.extend(o.external)
    _apply_extra(opts, o.extra)
    return os.path.join(work_dir, o.log_file)


# Error lines that never say why a dump or restore failed: the real cause is logged before them.
_NOISE = ("RLIMIT_NOFILE", "Dumping FAILED", "Restoring FAILED", "failed with -1", "Dump files (pid",
          "Unable to lock network", "Can't dump ghost file")
_ERROR_PREFIX = re.compile(r"^\([\d.]+\)\s*|^(Error|Warn) \([^)]*\):\s*")


def log_errors(log_path: str, limit: int = 2) -> str:
    """The first error lines of a CRIU log that name a cause (not its follow-up noise); empty if none."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f if "Error (" in ln or ln.startswith("Error")]
    except OSError:
        return ""
    cleaned = [_ERROR_PREFIX.sub("", _ERROR_PREFIX.sub("", ln)) for ln in lines]
    causes = [ln for ln in cleaned if not any(n in ln for n in _NOISE)] or cleaned[-1:]
    return "; ".join(causes[:limit])


class CriuFailed(CriuError):
    """CRIU failed; `reason` is the cause from its log, `log_path` where that log is now."""

    def __init__(self, action: str, reason: str, log_path: str):
        super().__init__(f"CRIU {action} failed: {reason} (log: {log_path})")
        self.action, self.reason, self.log_path = action, reason, log_path


def _errno_text(code: int) -> str:
    if code == errno.ESRCH:
        return "no such process"
    if code == errno.EEXIST:
        return "a process with a pid it needs already exists"
    if code == errno.EBADRQC:
        return "CRIU rejected the options"
    return os.strerror(code) if code else "failed"


def _criu(binary: str) -> Any:
    import pycriu  # loaded lazily: protobuf import is slow and only dump/restore need it

    client = pycriu.criu()
    client.use_binary(binary)
    return client


def _fail(action: str, exc: Exception, log_path: str) -> CriuFailed:
    detail = log_errors(log_path)
    code = getattr(exc, "errno", 0) or 0
    return CriuFailed(action, detail or _errno_text(code) or str(exc), log_path)


# Options both dumps and restores take that map one to one onto a criu command line flag.
COMMON_FLAGS = {"shell_job": "--shell-job", "tcp_established": "--tcp-established", "file_locks": "--file-locks",
                "link_remap": "--link-remap", "ext_unix_sk": "--ext-unix-sk"}
# A dump's own; a dump asked for anything else (an RPC field named in --criu-opts) goes over
# swrk, where CRIU checks the field by its name.
_DUMP_FLAGS = {"leave_running": "--leave-running", "skip_in_flight": "--skip-in-flight"}
_DUMP_EXTRA_FLAGS = {"leave_stopped": "--leave-stopped"}


def dump(binary: str, o: DumpOptions) -> None:
    """Checkpoint the tree rooted at o.pid into o.images_dir.

    The criu command line does it unless --criu-opts asked for RPC fields: it needs neither
    pycriu nor protobuf, whose import would cost every dump a twentieth of a second before CRIU
    starts, while the process waits to be checkpointed."""
    if all(name in _DUMP_EXTRA_FLAGS and value in (True, False) for name, value in o.extra.items()):
        _dump_cli(binary, o)
    else:
        _dump_rpc(binary, o)


def flag_args(o: CommonOptions, own: dict[str, str], more: Iterable[str] = ()) -> list[str]:
    """The criu command line flags for the options set in `o`: the common ones, `own` (the
    command's: field -> flag), `more` as given, then the externals."""
    args = [flag for name, flag in {**COMMON_FLAGS, **own}.items() if getattr(o, name)] + list(more)
    for ext in o.external:
        args += ["--external", ext]
    return args


def dump_args(o: DumpOptions) -> list[str]:
    """The criu command line flags of a dump without RPC-only options."""
    return flag_args(o, _DUMP_FLAGS, (_DUMP_EXTRA_FLAGS[name] for name, value in o.extra.items() if value is True))


def run_cli(cmd: list[str], action: str, log_path: str, pass_fds: tuple[int, ...] = ()) -> None:
    """Run a criu command line to its end; CriuFailed, with the cause from its log, if it fails."""
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            pass_fds=pass_fds)
    if result.returncode != 0:
        why = log_errors(log_path) or result.stderr.decode(errors="replace").strip() \
            or f"criu exited with {result.returncode}"
        raise CriuFailed(action, why, log_path)


def _dump_cli(binary: str, o: DumpOptions) -> None:
    work = o.work_dir or o.images_dir
    cmd = [binary, "dump", "-t", str(o.pid), "-D", o.images_dir, "-W", work, "-o", o.log_file,
           f"-v{o.log_level}", *dump_args(o)]
    log.info("criu dump pid=%d dir=%s", o.pid, o.images_dir)
    run_cli(cmd, f"dump of PID {o.pid}", os.path.join(work, o.log_file))


def _dump_rpc(binary: str, o: DumpOptions) -> None:
    import pycriu

    client = _criu(binary)
    with ExitStack() as stack:
        log_path = _common(stack, client.opts, o)
        client.opts.pid = o.pid
        client.opts.leave_running = o.leave_running
        client.opts.tcp_skip_in_flight = o.skip_in_flight
        log.info("criu dump pid=%d dir=%s (swrk)", o.pid, o.images_dir)
        try:
            client.dump()
        except pycriu.CRIUException as exc:
            raise _fail(f"dump of PID {o.pid}", exc, log_path) from None


def restore(binary: str, o: RestoreOptions) -> int:
    """Restore the tree in o.images_dir; returns the root pid."""
    import pycriu

    client = _criu(binary)
    with ExitStack() as stack:
        log_path = _common(stack, client.opts, o)
        client.opts.tcp_close = o.tcp_close
        client.opts.leave_stopped = o.leave_stopped
        client.opts.rst_sibling = o.rst_sibling
        client.opts.lazy_pages = o.lazy_pages
        for m in o.inherit:
            os.set_inheritable(m.fd, True)
            entry = client.opts.inherit_fd.add()
            entry.key, entry.fd = m.key, m.fd
        log.info("criu restore dir=%s sibling=%s", o.images_dir, o.rst_sibling)
        try:
            resp = client.restore()
        except pycriu.CRIUException as exc:
            raise _fail("restore", exc, log_path) from None
        return int(resp.pid)
