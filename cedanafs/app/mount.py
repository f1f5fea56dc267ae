"""Use cases of the mount: mount, umount, seal, and the helpers that dump into and restore from it.

`mount()` checks the mount point, then (unless --foreground) forks a server that opens the store
and the catalog, mounts, and tells the parent over a pipe once the mount answers requests, or
why it could not. `umount()` unmounts and waits for the server to exit. `seal()` is the explicit
commit of a checkpoint written into the mount (docs/mount.md has the rules).
"""

from __future__ import annotations

import gc
import logging
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..config import Settings, host_name
from ..criu import RestoreOptions, find_criu
from ..criu import lazy as criu_lazy
from ..errors import AlreadyExists, CedanaError, CheckpointError, MountBusy, MountError, NotFound, UsageError
from ..fuse import FSTYPE
from ..fuse.xattrs import AUTOSEAL as XATTR_AUTOSEAL
from ..fuse.xattrs import ERROR as XATTR_ERROR
from ..fuse.xattrs import KIND as XATTR_KIND
from ..fuse.xattrs import META as XATTR_META
from ..fuse.xattrs import PID as XATTR_PID
from ..fuse.xattrs import SEAL as XATTR_SEAL
from ..fuse.xattrs import STATE as XATTR_STATE
from ..fuse.xattrs import STREAMS as XATTR_STREAMS

log = logging.getLogger(__name__)

DEFAULT_AUTOSEAL_AFTER = 10.0
REFRESH_INTERVAL = 2.0  # how stale the tree may be: checkpoints of other machines show up this fast
MOUNT_TIMEOUT = 60.0


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo that is a cedanafs mount."""

    mountpoint: str
    source: str
    fstype: str


# --- finding mounts -------------------------------------------------------------------------

def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def cedanafs_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Every cedanafs mount this process can see."""
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2 and tail[0] == FSTYPE:
                found.append(MountInfo(_unescape(fields[4]), tail[1], tail[0]))
    return found


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    return any(m.mountpoint == target for m in cedanafs_mounts())


def mount_of(path: str | Path) -> str | None:
    """The cedanafs mount point that holds `path`, or None."""
    target = os.path.abspath(path)
    best = None
    for m in cedanafs_mounts():
        if target == m.mountpoint or target.startswith(m.mountpoint.rstrip("/") + "/"):
            if best is None or len(m.mountpoint) > len(best):
                best = m.mountpoint
    return best


# --- mount ----------------------------------------------------------------------------------

def check_mountpoint(path: str | Path) -> str:
    """The absolute mount point if a new mount can go there, else a UsageError saying why not."""
    mp = os.path.abspath(path)
    if is_mounted(mp):
        raise AlreadyExists(f"{mp} is already a cedanafs mount (cedana umount {mp} first)")
    try:
        entries = os.listdir(mp)
    except FileNotFoundError:
        raise NotFound(f"mount point {mp} does not exist") from None
    except NotADirectoryError:
        raise UsageError(f"mount point {mp} is not a directory") from None
    except OSError as exc:
        raise MountError(f"mount point {mp} cannot be used: {exc.strerror}") from None
    if entries:
        raise UsageError(f"mount point {mp} is not empty")
    return mp


def mount(settings: Settings, mountpoint: str | Path, *, store_url: str | None = None, foreground: bool = False,
          autoseal_after: float = DEFAULT_AUTOSEAL_AFTER, log_file: str | None = None,
          timeout: float = MOUNT_TIMEOUT) -> str:
    """Mount the store at `mountpoint`; in the background unless `foreground`. Returns the mount point."""
    mp = check_mountpoint(mountpoint)
    url = store_url or settings.store.url
    if foreground:
        _serve(settings, mp, url, autoseal_after, None)
        return mp
    return _mount_background(settings, mp, url, autoseal_after, log_file or default_log_file(settings), timeout)


def default_log_file(settings: Settings) -> str:
    return str(Path(settings.db.path).parent / "mount.log")


def _mount_background(settings: Settings, mp: str, url: str, autoseal_after: float, log_file: str,
                      timeout: float) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the server: never returns
        os.close(read_fd)
        _server_child(settings, mp, url, autoseal_after, log_file, write_fd)
    os.close(write_fd)
    try:
        answer = _read_answer(read_fd, timeout)
    finally:
        os.close(read_fd)
    if answer == "ok":
        return mp
    if not answer:
        _reap(pid)
        raise MountError(f"the mount server for {mp} exited before the mount was ready (see {log_file})")
    code, _, message = answer.partition("\t")
    _reap(pid)
    error = MountError(message)
    error.exit_code = int(code) if code.isdigit() else MountError.exit_code
    raise error


def _read_answer(fd: int, timeout: float) -> str:
    deadline, data = time.monotonic() + timeout, b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MountError(f"the mount did not come up within {timeout:.0f}s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _server_child(settings: Settings, mp: str, url: str, autoseal_after: float, log_file: str,
                  write_fd: int) -> None:
    code = 0
    try:
        os.setsid()
        _detach_stdio(log_file)
        from ..log import setup_logging

        setup_logging(os.environ.get("CEDANA_LOG_LEVEL") or "info", log_file)
        _serve(settings, mp, url, autoseal_after, lambda: _tell(write_fd, "ok"))
    except CedanaError as exc:
        _tell(write_fd, f"{exc.exit_code}\t{exc}")
        code = exc.exit_code
    except BaseException as exc:  # noqa: BLE001 - the parent must hear about any failure
        log.exception("mount server failed")
        _tell(write_fd, f"{MountError.exit_code}\tcannot mount {mp}: {type(exc).__name__}: {exc}")
        code = 70
    finally:
        os._exit(code)


def _detach_stdio(log_file: str) -> None:
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, (message.replace("\n", " ") + "\n").encode())
    except OSError:
        pass  # the parent is gone; nobody to tell


MALLOC_ARENAS = 4
MALLOC_MMAP_THRESHOLD = 256 << 10


def _limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Keep the server's RSS close to the bytes it really holds (the byte budget, the cache).

    glibc gives threads their own arenas (up to 8 per core), and after the first ~1 MiB chunk
    buffer is freed it raises its mmap threshold, so every later chunk buffer comes from an arena
    heap, where freed ones are kept: the RSS grew with the size of the checkpoints that passed
    through. Few arenas, and a fixed mmap threshold below the smallest chunk (every chunk buffer
    mapped and unmapped on its own). Measured on a 1 GiB dump and read over S3: peak RSS 305 ->
    229 MiB, RSS after the dump 224 -> 130 MiB, for ~15 % more CPU (page faults of fresh buffers).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (also stops its dynamic growth)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _serve(settings: Settings, mp: str, url: str, autoseal_after: float, ready: Callable[[], None] | None) -> None:
    """Open the store and catalog (after any fork: s3fs/gcsfs must not cross one), mount, serve."""
    _limit_malloc_arenas()
    from ..catalog import Catalog, Tree
    from ..fuse.mount import serve
    from ..streamer import Store, StoreSession

    store = Store.from_settings(settings, url, serving=True)
    catalog = Catalog(store.backend, settings.db.path, scope=store.url, refresh_interval=REFRESH_INTERVAL,
                      pool=store.read_pool)
    try:
        spill = Path(settings.cache.dir).parent / "spill"
        spill.mkdir(mode=0o700, parents=True, exist_ok=True)
        spill.chmod(0o700)  # pending checkpoint bytes: process memory
        tree = Tree(catalog, StoreSession(store, spill_dir=str(spill)), refresh_interval=REFRESH_INTERVAL,
                    autoseal_after=autoseal_after, host=host_name(settings))
        tree.refresh(force=True)  # a store that cannot be listed fails the mount, not the first ls
        # Everything loaded so far lives as long as the server: keep it out of the cyclic GC's
        # collections, which an ingest's many small objects trigger often.
        gc.freeze()
        serve(tree, mp, ready=ready, threads=max(16, 4 * store.streams))
    finally:
        catalog.close()
        store.close()



# --- umount ---------------------------------------------------------------------------------

def umount(mountpoint: str | Path, *, lazy: bool = False, timeout: float = 30.0) -> str:
    """Unmount a cedanafs mount and wait for its server to exit. Busy -> MountBusy."""
    mp = os.path.abspath(mountpoint)
    if not is_mounted(mp):
        raise NotFound(f"{mp} is not a cedanafs mount")
    pid = server_pid(mp)
    cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        if "busy" in detail.lower():
            raise MountBusy(f"{mp} is busy: a process still has files or its working directory in it"
                            " (stop it, or use `cedana umount --lazy`)")
        raise MountError(f"cannot unmount {mp}: {detail}")
    _wait_until(lambda: not is_mounted(mp), timeout, f"{mp} is still mounted after {timeout:.0f}s")
    if pid and not lazy:
        # After a lazy unmount the server keeps serving whoever still holds the mount.
        _wait_until(lambda: not _alive(pid), timeout, f"the mount server (pid {pid}) did not exit")
    return mp


def server_pid(mp: str) -> int | None:
    """The pid of the process serving a cedanafs mount (it answers the root's user.cedana.pid)."""
    try:
        return int(os.getxattr(mp, XATTR_PID))
    except (OSError, ValueError):
        return None  # a dead server (ENOTCONN) or an older one


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and _state(pid) != "Z"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait_until(cond: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise MountError(message)
        time.sleep(0.05)


# --- sealing and checkpoint directories -----------------------------------------------------

def checkpoint_state(path: str | Path) -> str:
    """`pending`, `sealed` or `deleted` for a checkpoint directory in a cedanafs mount."""
    try:
        return os.getxattr(path, XATTR_STATE).decode()
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"{path} is not a checkpoint directory in a cedanafs mount ({exc.strerror})") from None


def seal(path: str | Path, *, kind: str | None = None, meta: dict[str, str] | None = None) -> str:
    """Seal the checkpoint written into `path`: commit its manifest; it becomes read-only.

    Returns `job/id`. Raises CheckpointError with the mount's reason when it cannot be sealed.
    """
    path = os.path.abspath(path)
    checkpoint_state(path)
    try:
        if kind:
            os.setxattr(path, XATTR_KIND, kind.encode())
        for key, value in (meta or {}).items():
            os.setxattr(path, XATTR_META + key, str(value).encode())
        os.setxattr(path, XATTR_SEAL, b"1")
    except OSError as exc:
        reason = _seal_error(path) or exc.strerror
        raise CheckpointError(f"cannot seal {path}: {reason}") from None
    parts = Path(path).parts
    return f"{parts[-2]}/{parts[-1]}"


def read_error(ckpt_dir: str | Path) -> str:
    """Why the mount last failed to read a file of this checkpoint ("" if it never did)."""
    return _seal_error(str(ckpt_dir))


def _seal_error(path: str) -> str:
    try:
        return os.getxattr(path, XATTR_ERROR).decode()
    except OSError:
        return ""


def begin_checkpoint(job_dir: str | Path, name: str | None = None, *, streams: int = 0) -> Path:
    """Make a pending checkpoint dir under `<mount>/jobs/<job>` for a writer that will seal it itself.

    Auto-sealing is switched off for it, so a slow writer is never sealed half-way.
    """
    job_dir = Path(job_dir)
    if mount_of(job_dir) is None:
        raise UsageError(f"{job_dir} is not in a cedanafs mount")
    job_dir.mkdir(exist_ok=True)
    if not name:
        from ..catalog import new_checkpoint_id  # the catalog's import is not free: only when needed

        name = new_checkpoint_id()
    path = job_dir / name
    try:
        path.mkdir()
    except FileExistsError:
        raise AlreadyExists(f"checkpoint {path} already exists") from None
    except OSError as exc:
        raise UsageError(f"cannot make checkpoint {path}: {exc.strerror}") from None
    os.setxattr(path, XATTR_AUTOSEAL, b"0")
    if streams:  # at most this many chunks of each file uploading at once (--streams)
        os.setxattr(path, XATTR_STREAMS, str(streams).encode())
    return path


def discard_checkpoint(path: str | Path) -> None:
    """Remove a pending (or sealed) checkpoint dir from the mount: `rm -r` of it."""
    path = Path(path)
    if not path.exists():
        return
    for entry in path.iterdir():
        entry.unlink()
    path.rmdir()


def iter_files(path: str | Path) -> Iterator[Path]:
    """The regular files of a checkpoint directory, by name."""
    return (p for p in sorted(Path(path).iterdir()) if p.is_file())


# --- lazy restore from the mount ------------------------------------------------------------

# The image files CRIU reads before the process runs again; pages-*.img come later, on fault.
def prefetch_images(ckpt_dir: str | Path, *, include_pages: bool = False, threads: int = 8) -> int:
    """Read what CRIU reads first, ahead of it and in parallel; returns bytes read.

    The small image files (everything but `pages-*.img`), then, from the pages images, the ranges
    CRIU restores at once even with lazy pages (file-backed and shared mappings: not lazy in the
    pagemap) plus the first block of each, which also proves the store answers before anything
    is restored. Through the mount this pulls their chunks into the local cache, so CRIU's many
    small reads at restore do not each wait for the store. `include_pages` reads the pages
    images whole.
    """
    from concurrent.futures import ThreadPoolExecutor

    files = [p for p in iter_files(ckpt_dir) if include_pages or not p.name.startswith("pages-")]

    def slurp(path: Path) -> int:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while block := f.read(1 << 20):
                n += len(block)
        return n

    with ThreadPoolExecutor(max(1, min(threads, len(files) or 1))) as pool:
        total = sum(pool.map(slurp, files))
        if not include_pages:
            total += sum(pool.map(lambda r: _pread(*r), _eager_page_ranges(str(ckpt_dir))))
    return total


_PREFETCH_BLOCK = 1 << 20


def _eager_page_ranges(ckpt_dir: str) -> list[tuple[str, int, int]]:
    """(path, offset, length) pieces of the pages images that a lazy restore reads before resuming."""
    # Here, not at the top: ..types builds its records on import, which every dump and restore
    # would pay for to ask mount_of().
    from ..criu.images import read_pagemap, read_pstree
    from ..types import PAGE_SIZE

    pieces: list[tuple[str, int, int]] = []
    try:
        tree = read_pstree(ckpt_dir)
    except CheckpointError:
        return pieces  # not ours to judge here: CRIU will say what is wrong with the images
    for entry in tree:
        try:
            name, ranges = read_pagemap(ckpt_dir, entry.pid)
        except CheckpointError:
            continue
        path = os.path.join(ckpt_dir, name)
        spans = [(r.offset, r.length) for r in ranges if not r.lazy]
        if ranges:
            spans.insert(0, (0, min(ranges[0].length, PAGE_SIZE)))  # the probe: the store must answer
        merged: list[list[int]] = []
        for off, length in spans:
            if merged and off <= merged[-1][0] + merged[-1][1] + _PREFETCH_BLOCK:
                merged[-1][1] = max(merged[-1][1], off + length - merged[-1][0])
            else:
                merged.append([off, length])
        for off, length in merged:
            for start in range(off, off + length, _PREFETCH_BLOCK):
                pieces.append((path, start, min(_PREFETCH_BLOCK, off + length - start)))
    return pieces


def _pread(path: str, offset: int, length: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return len(os.pread(fd, length, offset))
    finally:
        os.close(fd)


LazyRestore = criu_lazy.LazyRestore  # the lazy-pages daemon and its watchdog live in criu/lazy.py


class _Unreadable(CheckpointError):
    """The images could not be read ahead: nothing was restored (the message says why)."""


def lazy_restore(ckpt_dir: str | Path, work_dir: str | Path, *, options: RestoreOptions | None = None,
                 shell_job: bool = True, criu: str = "", extra_args: tuple[str, ...] = (), prefetch: bool = True,
                 threads: int = 8) -> LazyRestore:
    """Restore the checkpoint at `ckpt_dir` (in the mount) with lazy pages; returns once it runs.

    The small images are read ahead in parallel (which also proves the store answers) while
    criu/lazy.py starts `criu lazy-pages`, then it runs `criu restore --lazy-pages` with the same
    options an eager restore gets (`options`; without them, a plain restore with `shell_job`).
    """
    ckpt_dir, work_dir = os.path.abspath(ckpt_dir), os.path.abspath(work_dir)
    if mount_of(work_dir) is not None:
        raise UsageError(f"the CRIU work dir {work_dir} must be local, not in a cedanafs mount")

    def read_ahead() -> None:  # while the lazy-pages daemon starts
        try:
            prefetch_images(ckpt_dir, threads=threads)
        except OSError as exc:
            raise _Unreadable(f"cannot read the images of {ckpt_dir} from the store:"
                              f" {read_error(ckpt_dir) or exc.strerror or exc}; nothing was restored") from None
    opts = options or RestoreOptions(images_dir=ckpt_dir, shell_job=shell_job)
    try:
        return criu_lazy.restore_lazy(find_criu(criu), opts, work_dir, extra_args=extra_args,
                                      meanwhile=read_ahead if prefetch else None)
    except _Unreadable:
        raise
    except CheckpointError as exc:
        why = read_error(ckpt_dir)
        if why:  # the mount could not read an image: say which chunk, not only CRIU's EIO
            raise CheckpointError(f"{exc} (the store: {why})") from None
        raise
