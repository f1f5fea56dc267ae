"""Mount lifecycle: mount options, one trio nursery, signals, periodic tasks, a clean unmount.

`serve()` blocks until the filesystem is unmounted (by `cedana umount`, fusermount3 -u) or the
process gets SIGTERM/SIGINT/SIGHUP, which turn into pyfuse3.terminate(), as in S3QL's mount.py.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

import pyfuse3
import trio

from ..catalog import Tree
from . import FSNAME
from .operations import Operations

log = logging.getLogger(__name__)

AUTOSEAL_PERIOD = 0.5
READ_AHEAD_KB = 4096


def mount_options(debug: bool = False) -> set[str]:
    options = set(pyfuse3.default_options) | {f"fsname={FSNAME}", f"subtype={FSNAME}", "noatime"}
    if os.geteuid() == 0:
        # Restored processes and other users read the images too; as root this needs no fuse.conf.
        options.add("allow_other")
    if debug:
        options.add("debug")
    return options


def serve(tree: Tree, mountpoint: str, *, ready: Callable[[], None] | None = None, threads: int = 32,
          debug: bool = False) -> None:
    """Mount the tree at `mountpoint` and serve requests until unmounted or signalled."""
    ops = Operations(tree, threads=threads)
    pyfuse3.init(ops, mountpoint, mount_options(debug))
    log.info("mounted %s at %s", FSNAME, mountpoint)
    try:
        trio.run(_main, ops, mountpoint, ready)
    finally:
        try:
            pyfuse3.close(unmount=True)
        finally:
            tree.close()
        log.info("unmounted %s", mountpoint)


async def _main(ops: Operations, mountpoint: str, ready: Callable[[], None] | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, name="signals")
        nursery.start_soon(_autoseal, ops, name="autoseal")
        nursery.start_soon(_when_live, mountpoint, ready, name="ready")
        try:
            await pyfuse3.main()
        finally:
            # pyfuse3.main returns when the filesystem went away: stop the other tasks with it.
            nursery.cancel_scope.cancel()


async def _when_live(mountpoint: str, ready: Callable[[], None] | None) -> None:
    """Once the kernel's INIT is answered (a stat of the root returns), tune and report ready."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    await trio.to_thread.run_sync(tune_readahead, mountpoint)
    if ready is not None:
        ready()


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()


async def _autoseal(ops: Operations) -> None:
    while True:
        await trio.sleep(AUTOSEAL_PERIOD)
        await ops.autoseal()


def tune_readahead(mountpoint: str) -> None:
    """Let the kernel read ahead in big requests: the default 128 KiB window is one round trip per
    128 KiB, far below what a chunked store serves. Best effort (needs root and sysfs)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("cannot raise the readahead of %s: %s", mountpoint, exc)
