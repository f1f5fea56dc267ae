"""Lazy restore: the `criu lazy-pages` daemon, its watchdog, and `criu restore --lazy-pages`.

The lazy-pages daemon must outlive the command that starts it (it serves pages until every one
is sent), so it runs in its own session under a small shell watchdog: if it fails, the process
it was feeding is killed, because untouched pages would read as zeros. The restore itself runs
the criu command line (not swrk) with the same options an eager restore gets over RPC
(`restore_args`), so a lazy restore never drops what the dump recorded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, UsageError
from .rpc import RestoreOptions, flag_args, log_errors

LAZY_SOCKET = "lazy-pages.socket"
LAZY_LOG = "lazy-pages.log"
RESTORE_LOG = "restore.log"
# A restore's own RestoreOptions fields that map one to one onto a criu command line flag.
_RESTORE_FLAGS = {"tcp_close": "--tcp-close", "leave_stopped": "--leave-stopped", "rst_sibling": "--restore-sibling"}


def restore_args(o: RestoreOptions) -> list[str]:
    """The criu command line flags for the options an RPC restore would get."""
    args = flag_args(o, _RESTORE_FLAGS)
    for m in o.inherit:
        args += ["--inherit-fd", f"fd[{m.fd}]:{m.key}"]
    for name, value in o.extra.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            args += [flag, str(value)]
        elif value is not False:
            raise UsageError(f"--criu-opts: {name!r} cannot be passed to a lazy restore")
    return args


RESTORED_PID = "restored.pid"
WATCHDOG_SCRIPT = r"""criu="$1"; shift
"$criu" lazy-pages "$@"; rc=$?
if [ $rc -eq 0 ]; then rm -rf -- "$W"; exit 0; fi
i=0; while [ ! -s "$W/restored.pid" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if [ -s "$W/restored.pid" ]; then
  p=$(cat "$W/restored.pid")
  kill -KILL -- "-$p" 2>/dev/null; pkill -KILL -P "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null
  echo "lazy-pages failed ($rc): killed the restored process $p" >> "$W/lazy-pages.log"
fi
exit $rc
"""


def kill_tree(pid: int) -> None:
    """SIGKILL a restored process, its process group (if it leads one) and its children."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    for target in [pid, *map(int, kids)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LazyPages:
    """A `criu lazy-pages` daemon serving the pages of `images_dir` to a restore in `work_dir`.

    The work dir must be local (CRIU binds a unix socket there), never the mount. The daemon
    exits by itself once it has sent every page; it must outlive the restore until then.
    """

    def __init__(self, images_dir: str | Path, work_dir: str | Path, criu: str):
        self.images_dir, self.work_dir = str(images_dir), str(work_dir)
        self.criu = criu
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> str:
        return os.path.join(self.work_dir, LAZY_LOG)

    def start(self, timeout: float = 30.0) -> "LazyPages":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "LazyPages":
        """Start the daemon without waiting for it (see wait_ready)."""
        os.makedirs(self.work_dir, exist_ok=True)
        # Its own session: it must outlive the command that started it. The shell around it
        # removes the work dir once every page is served (and keeps it, with the log, on failure).
        # If it fails (the store stayed unreachable, a chunk is missing or corrupt), the process
        # it was feeding must not run on: once its uffd is gone, untouched pages would read as
        # zeros. So the shell kills the restored tree (its pid lands in $W/restored.pid).
        script = WATCHDOG_SCRIPT
        self.proc = subprocess.Popen(
            ["sh", "-c", script, "sh", self.criu, "-D", self.images_dir, "-W", self.work_dir,
             "-o", LAZY_LOG, "-v4"],
            env={**os.environ, "W": self.work_dir}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 30.0) -> "LazyPages":
        """Wait until the daemon listens for the restore; CheckpointError if it never does."""
        assert self.proc is not None
        socket_path = os.path.join(self.work_dir, LAZY_SOCKET)
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                why = log_errors(self.log_path) or f"see {self.log_path}"
                raise CheckpointError(f"criu lazy-pages did not start: {why}")
            time.sleep(0.002)
        return self

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every page has been sent (the daemon exits); returns its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the shell and criu lazy-pages under it
            except ProcessLookupError:
                pass
            self.proc.wait()


@dataclass
class LazyRestore:
    """A process restored with lazy pages: its pid, and the daemon still feeding it memory."""

    pid: int
    pages: LazyPages

    def wait_complete(self, timeout: float | None = None) -> int:
        return self.pages.wait(timeout)


def restore_lazy(binary: str, o: RestoreOptions, work_dir: str, extra_args: tuple[str, ...] = (),
                 meanwhile: Callable[[], object] | None = None) -> LazyRestore:
    """Start the lazy-pages daemon for o.images_dir and the restore, detached; returns once it runs.
    `meanwhile` runs while both start (an exception from it stops them).

    The restore starts beside the daemon, not after it: each CRIU spends most of its start-up
    probing the kernel, and the restore only connects to the daemon once it has read the
    checkpoint's small images, by when the daemon listens. If it came too early all the same,
    it failed before making any process, and runs again once the daemon is ready."""
    pages = LazyPages(o.images_dir, work_dir, binary).launch()
    # Not in the work dir: the daemon may finish (and remove it) before we read the pid.
    pid_dir = tempfile.mkdtemp(prefix="cedana-lazy-pid-")
    pid_file = os.path.join(pid_dir, "pid")  # CRIU refuses to overwrite an existing pid file
    cmd = [binary, "restore", "-D", o.images_dir, "-W", work_dir, "--lazy-pages", "-d", "-o", RESTORE_LOG,
           "-v4", "--pidfile", pid_file, *restore_args(o), *extra_args]
    fds = tuple(m.fd for m in o.inherit)
    try:
        restore = _start(cmd, fds)
        try:
            if meanwhile is not None:
                meanwhile()
        except BaseException:
            restore.communicate()
            if os.path.exists(pid_file):
                kill_tree(int(Path(pid_file).read_text().strip()))
            raise
        # Not waiting for the daemon's socket first: with a small process the daemon may have
        # served every page, exited and removed its work dir before we would have seen it.
        _, stderr = restore.communicate()
        if restore.returncode != 0 and _too_early(work_dir):
            pages.wait_ready()  # says why, if the daemon could not start at all
            restore = _start(cmd, fds)
            _, stderr = restore.communicate()
        if restore.returncode != 0:
            log_path = os.path.join(work_dir, RESTORE_LOG)
            raise CheckpointError(f"lazy restore from {o.images_dir} failed: "
                                  f"{log_errors(log_path) or stderr.strip() or 'see ' + log_path}"
                                  f" (logs in {work_dir})")
        pid = int(Path(pid_file).read_text().strip())
        try:
            Path(work_dir, RESTORED_PID).write_text(str(pid))  # for the watchdog, if lazy-pages fails
        except FileNotFoundError:
            pass  # lazy-pages already sent everything and removed its work dir
        code = pages.proc.poll() if pages.proc else None
        if code:  # it failed before we could name the process: kill it here
            kill_tree(pid)
            raise CheckpointError(f"lazy restore from {o.images_dir} failed: criu lazy-pages exited with {code}"
                                  f" ({log_errors(pages.log_path)}); the restored process was killed")
        return LazyRestore(pid, pages)
    except BaseException:
        pages.kill()
        raise
    finally:
        shutil.rmtree(pid_dir, ignore_errors=True)


def _start(cmd: list[str], fds: tuple[int, ...]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, pass_fds=fds)


def _too_early(work_dir: str) -> bool:
    """Whether the restore failed only because the daemon did not listen yet (it then stopped
    before making any process: connecting is its last step before it forks the tree)."""
    try:
        with open(os.path.join(work_dir, RESTORE_LOG), errors="replace") as f:
            return any("connect to" in ln and LAZY_SOCKET in ln for ln in f if "Error" in ln)
    except OSError:
        return False
