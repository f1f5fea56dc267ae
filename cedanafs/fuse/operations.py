"""The pyfuse3 Operations adapter: FUSE requests in, calls on the tree, attributes or FUSEError out.

Each handler is a few lines: decode names, call cedanafs.catalog.Tree (on a worker thread when
the call may touch the store), turn the answer into pyfuse3's types; the `user.cedana.*`
controls are the table in cedanafs.fuse.xattrs. Errors are mapped at one boundary, `errno_of`
in the `fuse_errors` decorator, because any exception other than FUSEError that escapes a
handler kills the mount; store failures become EIO and are logged with their cause.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from typing import Any, Awaitable, Callable, Sequence

import pyfuse3
import trio

from ..catalog import Attr, Tree
from ..errors import AlreadyExists, CedanaError, FsError, InvalidManifest, NotFound
from . import xattrs

log = logging.getLogger(__name__)

# st_blksize: cp and friends size their buffers from it; 1 MiB requests suit a chunked store.
BLKSIZE = 1 << 20
# How long the kernel may trust what we said: sealed content never changes; directories change
# when another machine commits, so they are revalidated about as often as the tree refreshes.
IMMUTABLE_TIMEOUT = 300.0
TREE_TIMEOUT = 1.0
META_THREADS = 8


def errno_of(exc: BaseException) -> int:
    """The errno a failure means to a FUSE caller: the one place domain errors become errnos."""
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AlreadyExists):
        return errno.EEXIST
    if isinstance(exc, InvalidManifest):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def fuse_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """The error boundary: only FUSEError leaves a handler; the errno comes from errno_of."""

    @functools.wraps(handler)
    async def wrapper(self: "Operations", *args: Any) -> Any:
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing else may reach pyfuse3
            code = errno_of(exc)
            if code == errno.EIO:
                log.error("%s failed: %s", handler.__name__, exc, exc_info=not isinstance(exc, CedanaError))
            else:
                log.debug("%s: %s (%s)", handler.__name__, exc, errno.errorcode.get(code, code))
            raise pyfuse3.FUSEError(code) from None

    return wrapper


def entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    out = pyfuse3.EntryAttributes()
    out.st_ino = attr.inode
    out.generation = 0
    out.st_mode = attr.mode
    out.st_nlink = attr.nlink
    out.st_uid, out.st_gid = attr.uid, attr.gid
    out.st_size = attr.size
    out.st_blksize = BLKSIZE
    out.st_blocks = (attr.size + 511) // 512
    out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = attr.mtime_ns
    timeout = IMMUTABLE_TIMEOUT if attr.immutable else (TREE_TIMEOUT if not _is_file(attr) else 0.0)
    out.entry_timeout = out.attr_timeout = timeout
    return out


def _is_file(attr: Attr) -> bool:
    return (attr.mode & 0o170000) == 0o100000


class Operations(pyfuse3.Operations):
    """cedanafs as a FUSE filesystem: a protocol adapter over a Tree."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # writes must reach the streaming writer in order, as they happen
    enable_acl = False

    def __init__(self, tree: Tree, threads: int = 32):
        super().__init__()
        self.tree = tree
        # Store I/O blocks (uploads under backpressure, chunk fetches): it runs on worker threads,
        # at most `threads` at once, so the trio loop keeps serving everything else.
        self.limiter = trio.CapacityLimiter(threads)
        # Names and attributes get threads of their own: a burst of uploads waiting for the store
        # (which bounds its transfers with its own pools) never keeps `ls` waiting for a thread.
        self.meta_limiter = trio.CapacityLimiter(META_THREADS)

    async def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=self.limiter)

    async def _meta(self, func: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(func, *args), limiter=self.meta_limiter)

    # --- names and attributes -------------------------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return entry_attributes(await self._meta(self.tree.lookup, parent_inode, os.fsdecode(name)))

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return entry_attributes(await self._meta(self.tree.getattr, inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        changes = {
            "mode": attr.st_mode if fields.update_mode else None,
            "size": attr.st_size if fields.update_size else None,
            "mtime_ns": attr.st_mtime_ns if fields.update_mtime else None,
            "uid": attr.st_uid if fields.update_uid else None,
            "gid": attr.st_gid if fields.update_gid else None,
        }
        return entry_attributes(await self._run(self.tree.setattr, inode, **changes))

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        return os.fsencode(self.tree.readlink(inode))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, _ in inode_list:
            try:
                self.tree.forget(inode)
            except Exception:  # noqa: BLE001 - forget cannot fail towards the kernel
                log.debug("forget(%d) failed", inode, exc_info=True)

    # --- directories ----------------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        await self._meta(self.tree.getattr, inode)
        return inode

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = await self._meta(self.tree.readdir, fh)
        for index in range(start_id, len(entries)):
            name, attr = entries[index]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry_attributes(attr), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        attr = await self._run(self.tree.mkdir, parent_inode, os.fsdecode(name), mode, ctx.uid, ctx.gid)
        return entry_attributes(attr)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        await self._run(self.tree.rmdir, parent_inode, os.fsdecode(name))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any = None) -> None:
        await self._run(self.tree.unlink, parent_inode, os.fsdecode(name))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any = None) -> None:
        await self._run(self.tree.rename, parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                        os.fsdecode(name_new), flags)

    # --- files ------------------------------------------------------------------------------------

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = await self._run(self.tree.create, parent_inode, os.fsdecode(name), mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), entry_attributes(attr)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        fh = await self._run(self.tree.open, inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.tree.is_immutable(fh))

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self._run(self.tree.read, fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._run(self.tree.write, fh, off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self._run(self.tree.flush, fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.tree.fsync(fh)

    @fuse_errors
    async def release(self, fh: int) -> None:
        await self._run(self.tree.release, fh)

    # --- extended attributes and the rest -----------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        # In the loop, not on a thread: the kernel asks for security.capability before every write.
        # The tree lock is never held across store I/O, so this never waits for the store.
        return xattrs.get(self.tree, inode, os.fsdecode(name))

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any = None) -> list[bytes]:
        return [os.fsencode(n) for n in xattrs.names(self.tree, inode)]

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any = None) -> None:
        await self._run(xattrs.set, self.tree, inode, os.fsdecode(name), bytes(value), ctx.uid if ctx else 0)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any = None) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @fuse_errors
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        # A store has no fixed capacity; report plenty so tools that check free space go ahead.
        out.f_bsize, out.f_frsize = BLKSIZE, 4096
        out.f_blocks = out.f_bfree = out.f_bavail = 1 << 40
        out.f_files = out.f_ffree = out.f_favail = 1 << 30
        out.f_namemax = 255
        return out

    async def autoseal(self) -> None:
        """Seal the pending checkpoints the import rule says are complete (called periodically)."""
        for inode in self.tree.autoseal_due():
            try:
                manifest = await self._run(self.tree.seal, inode, "import")
                log.info("auto-sealed checkpoint %s", manifest.name)
            except Exception as exc:  # noqa: BLE001 - one bad import must not stop the mount
                log.warning("cannot seal checkpoint (inode %d): %s", inode, exc)
