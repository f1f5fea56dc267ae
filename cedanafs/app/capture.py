"""Dumps into the mount at CRIU's own speed, and eager restores out of it at local speed.

A dump into `<mount>/jobs/<job>/` does not make CRIU write through FUSE (every write a round
trip while the process is frozen): CRIU writes its images into a private spool directory on a
local filesystem (tmpfs by default: config `spool.dir`, bounded by `spool.size`), the process is
released as soon as CRIU is done, and the mount server then ingests the spool straight into the
store (user.cedana.ingest on the pending checkpoint) and seals it. With --leave-running the
process runs again at once; without, CRIU leaves it stopped until the checkpoint is committed,
then it is killed, or resumed if the commit fails, so nothing is lost. When the spool cannot
hold the dump (predicted from the tree's resident memory, or CRIU ran out of space there), CRIU
writes through the mount as before.

An eager restore from the mount has the mount server hand the checkpoint's files to CRIU
itself (user.cedana.serve: `criu restore --stream` reads them from pipes the server fills, so
chunks are fetched and decoded while CRIU restores, never copied to a local file first). Where
that cannot be (restore options only the RPC takes, an older mount server), it asks the server
to write the files into a spool directory (user.cedana.materialize: chunks fetched and decoded
in parallel, no FUSE data path) and restores from there, and failing that reads through the mount.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .. import criu
from ..config import Settings
from ..errors import CheckpointError, CriuError
from ..fuse.xattrs import INGEST as XATTR_INGEST
from ..fuse.xattrs import INGEST_FOLLOW as XATTR_INGEST_FOLLOW
from ..fuse.xattrs import MATERIALIZE as XATTR_MATERIALIZE
from ..fuse.xattrs import PROGRESS as XATTR_PROGRESS
from ..fuse.xattrs import SERVE as XATTR_SERVE
from ..spool import ABANDONED, COMPLETE, WRITER, writer_alive
from . import mount as mountapp

log = logging.getLogger(__name__)

SPOOL_MARGIN = 64 << 20  # beside the images: CRIU's log, the state file, rounding
MEMORY_RESERVE = 1 << 30  # a tmpfs spool never takes the machine's last GiB of memory
TRASH = "trash-"  # a spool dir being removed in the background
TRASH_AGE = 60.0  # one still there after this long was left by an interrupted removal

Report = Callable[[dict], None]


@dataclass(frozen=True)
class Captured:
    """A checkpoint committed in the mount, and when each step finished (seconds from the start)."""

    path: str
    captured_after: float
    committed_after: float
    via: str  # "spool" or "mount"


def dump_into_mount(settings: Settings, job_dir: str, name: str | None, streams: int, *, pid: int,
                    leave_running: bool, run_dump: Callable[[str, bool], object], kind: str,
                    meta: dict[str, str] | None = None, report: Report | None = None,
                    began: Callable[[str], None] | None = None) -> Captured:
    """CRIU dumps the tree of `pid`; it is committed in the mount, or nothing is.

    `run_dump(images_dir, leave_stopped)` runs CRIU into a dir and writes process_state.json
    (app.process.criu_dump: the one dump of process and job commands). Without leave_running
    the dumped tree stays stopped until committed, then is killed. `began(path)` hears the
    pending checkpoint's path before CRIU runs.
    """
    started = time.monotonic()
    ckpt = str(mountapp.begin_checkpoint(job_dir, name, streams=streams))
    try:
        if began is not None:
            began(ckpt)
        dump = _Dump(ckpt, pid, leave_running, run_dump, kind, meta, started, report, settings.spool.follow)
        with spool_dir(settings, predicted_size(pid)) as spool:
            if spool is not None:
                try:
                    return dump.run(spool)
                except _SpoolFull:
                    log.warning("the spool %s ran out of space; dumping through the mount", settings.spool.dir)
        return dump.run(None)
    except BaseException:
        _discard_quietly(ckpt)
        raise


class _SpoolFull(Exception):
    """CRIU failed for want of space in the spool (the process was resumed by CRIU)."""


@dataclasses.dataclass
class _Dump:
    """One dump into the pending checkpoint `ckpt`: through a spool dir, or (None) through the mount."""

    ckpt: str
    pid: int
    leave_running: bool
    run_dump: Callable[[str, bool], object]
    kind: str
    meta: dict[str, str] | None
    started: float
    report: Report | None
    follow: bool = False

    def run(self, spool: str | None) -> Captured:
        images = spool or self.ckpt
        ingest = _Ingest(self.ckpt, spool, self.kind, self.meta, self.report, self.follow) if spool else None
        try:
            self.run_dump(images, not self.leave_running)  # stopped, not killed, until committed
        except CriuError:
            if ingest is not None:
                ingest.abandon()
            if spool is not None and nearly_full(spool):
                raise _SpoolFull() from None
            raise
        except BaseException:
            if ingest is not None:
                ingest.abandon()
            raise
        captured = time.monotonic() - self.started
        tree = [e.pid for e in criu.read_pstree(images)] or [self.pid]
        try:
            if ingest is not None:
                ingest.finish()
            else:
                mountapp.seal(self.ckpt, kind=self.kind, meta=self.meta)
        except BaseException:
            if ingest is not None:
                ingest.abandon()
            if not self.leave_running:
                signal_tree(tree, signal.SIGCONT)
            raise
        committed = time.monotonic() - self.started
        if not self.leave_running:
            signal_tree(tree, signal.SIGKILL)
        via = "spool" if spool else "mount"
        log.info("checkpoint %s: captured after %.2f s, committed after %.2f s (via %s)",
                 self.ckpt, captured, committed, via)
        return Captured(self.ckpt, captured, committed, via)


class _Ingest:
    """The mount server taking the spool in (user.cedana.ingest), once CRIU is done; or, with
    `follow` (config spool.follow), while CRIU writes it (user.cedana.ingest-follow): started
    before CRIU, told it is complete (or abandoned) by a marker file, joined at the end."""

    def __init__(self, ckpt: str, spool: str, kind: str, meta: dict[str, str] | None, report: Report | None,
                 follow: bool = False):
        self.ckpt, self.spool, self.follow, self.report = ckpt, spool, follow, report
        self.error: OSError | None = None
        _set_meta(ckpt, kind, meta)
        with open(os.path.join(spool, WRITER), "w") as f:  # if we are killed, the mount stops following
            f.write(f"{os.getpid()}\n")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest", daemon=True)
        self._watcher: threading.Thread | None = None
        if follow:
            self._start()

    def _start(self) -> None:
        self._thread.start()
        if self.report is not None:
            self._watcher = threading.Thread(target=_watch_progress, args=(self.ckpt, self._done, self.report),
                                             daemon=True)
            self._watcher.start()

    def _run(self) -> None:
        try:
            name = XATTR_INGEST_FOLLOW if self.follow else XATTR_INGEST
            os.setxattr(self.ckpt, name, os.fsencode(self.spool))
        except OSError as exc:
            self.error = exc
        finally:
            self._done.set()

    def _mark(self, name: str) -> None:
        with open(os.path.join(self.spool, name), "w"):
            pass

    def abandon(self) -> None:
        if self._thread.is_alive():
            self._mark(ABANDONED)
            self._thread.join()

    def finish(self) -> None:
        """Every file is final: wait until the checkpoint is committed."""
        self._mark(COMPLETE)
        if not self.follow:
            self._start()
        self._thread.join()
        if self._watcher is not None:
            self._watcher.join()
        if self.error is not None:
            reason = mountapp.read_error(self.ckpt) or self.error.strerror
            raise CheckpointError(f"cannot commit {self.ckpt}: {reason}")


def _set_meta(ckpt: str, kind: str, meta: dict[str, str] | None) -> None:
    os.setxattr(ckpt, mountapp.XATTR_KIND, kind.encode())
    for key, value in (meta or {}).items():
        os.setxattr(ckpt, mountapp.XATTR_META + key, str(value).encode())


def _watch_progress(ckpt: str, done: threading.Event, report: Report) -> None:
    while not done.wait(0.5):
        progress = read_progress(ckpt)
        if progress is not None:
            report(progress)


def read_progress(ckpt: str) -> dict | None:
    """A running ingest's counters ({"total", "read", "done", "stored"}), None when none runs."""
    try:
        return json.loads(os.getxattr(ckpt, XATTR_PROGRESS))
    except (OSError, ValueError):
        return None


# --- the spool ---------------------------------------------------------------------------------

@contextmanager
def spool_dir(settings: Settings, needed: int) -> Iterator[str | None]:
    """A private directory in the spool for a dump of about `needed` bytes; None if it cannot hold it."""
    root = settings.spool.dir
    if not root:
        yield None
        return
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        room = spool_room(root, settings.spool.size)
    except OSError as exc:
        log.warning("spool %s unusable (%s); dumping through the mount", root, exc.strerror)
        yield None
        return
    if needed + SPOOL_MARGIN > room:
        log.info("a dump of ~%d MiB does not fit the spool's %d MiB; dumping through the mount",
                 needed >> 20, room >> 20)
        yield None
        return
    _remove_abandoned(root)
    path = tempfile.mkdtemp(prefix="dump-", dir=root)
    try:
        yield path
    finally:
        remove_in_background(path)


def remove_in_background(path: str) -> None:
    """Remove a spool dir without waiting: it is renamed out of the way at once and removed by a
    detached `rm` (freeing a GiB of tmpfs pages takes ~0.1 s the command need not wait for)."""
    trash = os.path.join(os.path.dirname(path), TRASH + os.path.basename(path))
    try:
        os.rename(path, trash)
        # sh puts rm in the background and exits: nothing is left for us to reap.
        subprocess.run(["sh", "-c", 'rm -rf -- "$1" &', "sh", trash], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(trash if os.path.exists(trash) else path, ignore_errors=True)


def _remove_abandoned(root: str) -> None:
    """Spool dirs of dumps whose process was killed outright, and removals that never finished
    (nobody else removes them)."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith("dump-") and os.path.exists(os.path.join(path, WRITER)) \
                and not writer_alive(path, every=0):
            log.warning("removing the spool of an interrupted dump: %s", path)
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(TRASH) and _older_than(path, TRASH_AGE):
            shutil.rmtree(path, ignore_errors=True)


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except OSError:
        return False


def spool_room(root: str, limit: int) -> int:
    """Bytes a new spool dir may take: free space, the configured limit, and (tmpfs) free memory."""
    st = os.statvfs(root)
    room = st.f_bavail * st.f_frsize
    if limit > 0:
        room = min(room, limit - _used(root))
    if _is_tmpfs(root):
        import psutil

        room = min(room, psutil.virtual_memory().available - MEMORY_RESERVE)
    return max(0, room)


def _used(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _is_tmpfs(path: str) -> bool:
    import psutil

    best, fstype = "", ""
    real = os.path.realpath(path)
    for part in psutil.disk_partitions(all=True):
        if (real == part.mountpoint or real.startswith(part.mountpoint.rstrip("/") + "/")) \
                and len(part.mountpoint) > len(best):
            best, fstype = part.mountpoint, part.fstype
    return fstype == "tmpfs"


def nearly_full(path: str) -> bool:
    """Whether CRIU's failure in a spool dir may have been for want of space there."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize < SPOOL_MARGIN


def predicted_size(pid: int) -> int:
    """About what CRIU will write for the tree of `pid`: its resident memory."""
    import psutil  # loaded by the commands that dump, not by every restore

    total = 0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def signal_tree(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _discard_quietly(ckpt: str) -> None:
    try:
        mountapp.discard_checkpoint(ckpt)
    except OSError as exc:
        log.warning("could not discard pending checkpoint %s: %s", ckpt, exc)


# --- eager restore out of the mount --------------------------------------------------------------

@contextmanager
def materialized(settings: Settings, ckpt_dir: str) -> Iterator[str]:
    """The checkpoint's images in a local spool dir when the mount server can put them there,
    else the checkpoint dir in the mount itself."""
    needed = sum(p.stat().st_size for p in mountapp.iter_files(ckpt_dir))
    with spool_dir(settings, needed) as spool:
        if spool is None:
            yield ckpt_dir
            return
        target = os.path.join(spool, "images")
        try:
            os.setxattr(ckpt_dir, XATTR_MATERIALIZE, os.fsencode(target))
        except OSError as exc:
            if exc.errno == errno.EIO:  # the store could not give a chunk: say which, restore nothing
                raise CheckpointError(f"cannot read the images of {ckpt_dir} from the store: "
                                      f"{mountapp.read_error(ckpt_dir) or exc.strerror}; nothing was restored") from None
            log.warning("cannot copy %s out of the mount (%s); restoring through it", ckpt_dir, exc.strerror)
            yield ckpt_dir
            return
        yield target


@contextmanager
def served(ckpt_dir: str) -> Iterator[str | None]:
    """A private local dir where the mount server listens for `criu restore --stream` to read the
    checkpoint's images from; None when it cannot serve them (then materialize instead)."""
    path = tempfile.mkdtemp(prefix="cedana-serve-")
    if len(os.path.join(path, "streamer-serve.sock")) > 100:  # a unix socket's path is short
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="cedana-serve-", dir="/tmp")
    try:
        try:
            os.setxattr(ckpt_dir, XATTR_SERVE, os.fsencode(path))
        except OSError as exc:
            log.info("the mount cannot serve %s to CRIU (%s); copying it out", ckpt_dir, exc.strerror)
            yield None
            return
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
