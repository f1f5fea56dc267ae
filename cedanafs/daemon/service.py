"""`cedana daemon start`: the service that owns the job supervisor, the catalog and the mount.

Start-up, in order: take the daemon lock (`<address>.lock`; a second daemon on the same socket
stops here), bring up the mount at mount.dir (reusing a live one left by a daemon that was killed,
replacing a dead one), open the catalog and the job database, discard checkpoints left pending by
an interrupted dump, then run one trio nursery: the control socket, the reaper of children and the
signal watcher. SIGTERM or SIGINT stops the socket, unmounts (lazily if busy) and leaves every job
running; after a restart, jobs are found again by pid and start time.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import time
from contextlib import ExitStack
from typing import Any

import trio

from .. import __version__
from ..app import mount as app_mount
from ..app.jobs import JobDB, JobService, jobs_db_path
from ..config import Settings, host_name
from ..errors import AlreadyExists, CedanaError, PermissionDenied
from . import client, handlers, server

log = logging.getLogger(__name__)

REAP_PERIOD = 1.0


class Daemon:
    """What one running daemon owns; `run()` blocks until SIGTERM/SIGINT."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.address = os.path.abspath(settings.address)
        self.mount_dir = os.path.abspath(settings.mount.dir)
        self.started = time.time()
        self.jobs: JobService | None = None
        self.catalog: Any = None

    def run(self) -> None:
        if os.geteuid() != 0:
            raise PermissionDenied("the cedana daemon must run as root (CRIU needs it)")
        with ExitStack() as stack:
            _hold_lock(stack, self.address)
            self._start_mount(stack)
            self._open_state(stack)
            self.jobs.recover()
            stack.callback(_unlink, self.address)
            trio.run(self._main)
        log.info("daemon stopped")

    # --- start-up and shut-down ---

    def _start_mount(self, stack: ExitStack) -> None:
        os.makedirs(self.mount_dir, exist_ok=True)
        if app_mount.is_mounted(self.mount_dir):
            if _answers(self.mount_dir):
                log.info("reusing the live mount at %s", self.mount_dir)
                stack.callback(self._stop_mount)
                return
            log.warning("the mount at %s is dead: replacing it", self.mount_dir)
            app_mount.umount(self.mount_dir, lazy=True)
        # Forks the mount server: before any thread of ours exists, as forking wants.
        app_mount.mount(self.settings, self.mount_dir)
        stack.callback(self._stop_mount)
        log.info("mounted %s at %s", self.settings.store.url, self.mount_dir)

    def _stop_mount(self) -> None:
        try:
            app_mount.umount(self.mount_dir)
        except app_mount.MountBusy:
            log.warning("%s is busy: unmounting lazily", self.mount_dir)
            app_mount.umount(self.mount_dir, lazy=True)
        except CedanaError as exc:
            log.warning("cannot unmount %s: %s", self.mount_dir, exc)

    def _open_state(self, stack: ExitStack) -> None:
        from ..catalog import Catalog
        from ..streamer import open_store_backend

        backend = open_store_backend(self.settings.store.url, self.settings)
        self.catalog = Catalog(backend, self.settings.db.path, scope=backend.url, serve_stale=True)
        stack.callback(self.catalog.close)
        db = JobDB(jobs_db_path(self.settings))
        stack.callback(db.close)
        _make_private(self.settings.db.path, jobs_db_path(self.settings))
        self.jobs = JobService(self.settings, db, self.catalog, self.mount_dir)

    # --- the service ---

    async def _main(self) -> None:
        listener = await server.bind(self.address)
        calls = handlers.Handlers(self.jobs, self.health)
        with listener:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, nursery.cancel_scope, name="signals")
                nursery.start_soon(self._reaper, name="reaper")
                nursery.start_soon(server.serve, listener, calls.dispatch, name="control socket")
                if self.settings.kubernetes.watch:
                    nursery.start_soon(self._watch_kubelet, name="kubelet checkpoints")
                log.info("cedana daemon %s listening on %s (pid %d)", __version__, self.address, os.getpid())
                _sd_notify("READY=1")

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: nothing to reload")
                    continue
                log.info("%s: stopping (jobs keep running)", signal.Signals(signum).name)
                _sd_notify("STOPPING=1")
                scope.cancel()

    async def _reaper(self) -> None:
        """Reap our children (jobs run or restored by us) on SIGCHLD, and every second anyway."""
        with trio.open_signal_receiver(signal.SIGCHLD) as sigchld:
            while True:
                await trio.to_thread.run_sync(self.jobs.reap)
                with trio.move_on_after(REAP_PERIOD):
                    await sigchld.__anext__()

    async def _watch_kubelet(self) -> None:
        """Import the container checkpoint archives that appear in kubernetes.checkpoint_dir."""
        from ..app.checkpoints import open_checkpoints
        from ..app.kubelet import ArchiveWatcher, watcher_state_path

        k8s = self.settings.kubernetes
        watcher = ArchiveWatcher(lambda: open_checkpoints(self.settings), k8s.checkpoint_dir,
                                 watcher_state_path(self.settings))
        log.info("importing container checkpoints from %s every %d s", k8s.checkpoint_dir, k8s.watch_interval)
        while True:
            try:
                await trio.to_thread.run_sync(watcher.scan)
            except Exception:  # noqa: BLE001 - the store may be down for a while: try again next time
                log.exception("cannot scan %s for container checkpoints", k8s.checkpoint_dir)
            await trio.sleep(max(1, k8s.watch_interval))

    def health(self) -> dict:
        mounted = app_mount.is_mounted(self.mount_dir) and _answers(self.mount_dir)
        return {
            "version": __version__, "pid": os.getpid(), "address": self.address,
            "uptime": round(time.time() - self.started, 1), "host": host_name(self.settings),
            "mount": {"dir": self.mount_dir, "mounted": mounted,
                      "server_pid": app_mount.server_pid(self.mount_dir) if mounted else None},
            "store": self.settings.store.url, "jobs": len(self.jobs.db.all()) if self.jobs else 0,
            "healthy": mounted,
        }


def start(settings: Settings) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    Daemon(settings).run()


def _hold_lock(stack: ExitStack, address: str) -> None:
    """One daemon per socket: an exclusive lock on `<address>.lock`, held for the daemon's life."""
    os.makedirs(os.path.dirname(address) or ".", exist_ok=True)
    path = address + ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyExists(f"a cedana daemon (pid {holder}) is already running on {address}") from None
    if client.is_listening(address):
        os.close(fd)
        raise AlreadyExists(f"something is already listening on {address}")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    # The mount server is forked from us and must not inherit (and so keep) the lock.
    held = [fd]
    os.register_at_fork(after_in_child=lambda: held and _close_quietly(held.pop()))
    stack.callback(lambda: held and _close_quietly(held.pop()))


def _answers(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
        os.listdir(mountpoint)
    except OSError:
        return False
    return True


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; nothing without $NOTIFY_SOCKET."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), target)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _make_private(*db_paths: str) -> None:
    """The catalog and job databases (and their WAL files) are root's alone: 0600."""
    for base in db_paths:
        for path in (base, base + "-wal", base + "-shm"):
            try:
                os.chmod(path, 0o600)
            except FileNotFoundError:
                pass
