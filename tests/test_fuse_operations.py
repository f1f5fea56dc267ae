"""Unit tier: the pyfuse3 Operations adapter driven without a mount (handlers awaited directly)."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from cedanafs.errors import StoreError
from cedanafs.fuse.operations import Operations

pytestmark = [pytest.mark.ops, pytest.mark.timeout(60)]

CTX = SimpleNamespace(uid=0, gid=0, pid=1, umask=0o022)
W = os.O_WRONLY | os.O_CREAT


def run(coro_fn, *args):
    return trio.run(coro_fn, *args)


def fuse_errno(coro_fn, *args) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(coro_fn, *args)
    return info.value.errno


@pytest.fixture
def ops(fs_tree):
    return Operations(fs_tree.tree, threads=4)


def fields(**kw):
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid", "update_gid",
             "update_size")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


def attrs(**kw):
    base = dict(st_mode=0, st_size=0, st_mtime_ns=0, st_uid=0, st_gid=0)
    return SimpleNamespace(**{**base, **kw})


def test_full_cycle_through_handlers(ops, fs_tree):
    async def main():
        jobs = (await ops.lookup(pyfuse3.ROOT_INODE, b"jobs", CTX)).st_ino
        job = await ops.mkdir(jobs, b"j1", 0o755, CTX)
        ckpt = await ops.mkdir(job.st_ino, b"c1", 0o755, CTX)
        assert stat.S_ISDIR(ckpt.st_mode)
        info, entry = await ops.create(ckpt.st_ino, b".inventory.img.tmp", 0o600, W, CTX)
        assert info.keep_cache is False
        assert await ops.write(info.fh, 0, b"inventory") == 9
        await ops.fsync(info.fh, False)
        await ops.flush(info.fh)
        await ops.release(info.fh)
        await ops.rename(ckpt.st_ino, b".inventory.img.tmp", ckpt.st_ino, b"inventory.img", 0, CTX)
        new = await ops.setattr(entry.st_ino, attrs(st_mtime_ns=1_234_000_000_000_000_007),
                                fields(update_mtime=True), None, CTX)
        assert new.st_mtime_ns == 1_234_000_000_000_000_007
        assert await ops.getxattr(ckpt.st_ino, b"user.cedana.state", CTX) == b"pending"
        await ops.setxattr(ckpt.st_ino, b"user.cedana.seal", b"1", CTX)
        assert await ops.getxattr(ckpt.st_ino, b"user.cedana.state", CTX) == b"sealed"
        f = await ops.lookup(ckpt.st_ino, b"inventory.img", CTX)
        assert (f.st_size, f.st_mtime_ns) == (9, 1_234_000_000_000_000_007)
        assert f.attr_timeout > 1  # sealed: the kernel may cache it
        info = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert info.keep_cache is True
        assert await ops.read(info.fh, 2, 100) == b"ventory"
        await ops.release(info.fh)
        link = await ops.lookup(job.st_ino, b"latest", CTX)
        assert stat.S_ISLNK(link.st_mode)
        assert await ops.readlink(link.st_ino, CTX) == b"c1"
        return ckpt.st_ino, f.st_ino

    ckpt, f = run(main)
    assert [i.id for i in fs_tree.catalog.checkpoints()] == ["c1"]
    # Sealed: every kind of change is refused with EROFS, as a FUSEError (never anything else).
    assert fuse_errno(ops.create, ckpt, b"x", 0o600, W, CTX) == errno.EROFS
    assert fuse_errno(ops.open, f, os.O_WRONLY, CTX) == errno.EROFS
    assert fuse_errno(ops.setattr, f, attrs(st_mode=0o777), fields(update_mode=True), None, CTX) == errno.EROFS
    assert fuse_errno(ops.rename, ckpt, b"inventory.img", ckpt, b"y", 0, CTX) == errno.EROFS


def test_enoent_and_enodata(ops):
    assert fuse_errno(ops.lookup, pyfuse3.ROOT_INODE, b"nope", CTX) == errno.ENOENT
    assert fuse_errno(ops.getattr, 999_999, CTX) == errno.ENOENT
    assert fuse_errno(ops.getxattr, pyfuse3.ROOT_INODE, b"security.capability", CTX) == pyfuse3.ENOATTR
    assert fuse_errno(ops.setxattr, pyfuse3.ROOT_INODE, b"user.other", b"1", CTX) == errno.ENOTSUP


def test_readdir_replies_in_order_and_resumes(ops, fs_tree, monkeypatch):
    replies = []

    def reply(token, name, attr, next_id):
        if len(replies) >= token:
            return False
        replies.append((name, attr.st_ino, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)

    async def main():
        jobs = (await ops.lookup(pyfuse3.ROOT_INODE, b"jobs", CTX)).st_ino
        for name in (b"b", b"a", b"c"):
            await ops.mkdir(jobs, name, 0o755, CTX)
        fh = await ops.opendir(jobs, CTX)
        await ops.readdir(fh, 0, 2)  # room for two entries only
        await ops.readdir(fh, replies[-1][2], 3)  # resume where the kernel stopped
        await ops.releasedir(fh)

    run(main)
    assert [r[0] for r in replies] == [b"a", b"b", b"c"]


@pytest.mark.expect_warnings
def test_unexpected_exceptions_become_eio(ops, fs_tree, monkeypatch, caplog):
    def broken(*args, **kw):
        raise RuntimeError("bug in the tree")

    monkeypatch.setattr(fs_tree.tree, "getattr", broken)
    assert fuse_errno(ops.getattr, pyfuse3.ROOT_INODE, CTX) == errno.EIO
    assert "bug in the tree" in caplog.text

    def store_down(*args, **kw):
        raise StoreError("bucket unreachable")

    monkeypatch.setattr(fs_tree.tree, "read", store_down)
    assert fuse_errno(ops.read, 1, 0, 10) == errno.EIO
    assert "bucket unreachable" in caplog.text


def test_unlink_rmdir_of_sealed_checkpoint(ops, fs_tree):
    async def main():
        jobs = (await ops.lookup(pyfuse3.ROOT_INODE, b"jobs", CTX)).st_ino
        job = (await ops.mkdir(jobs, b"j1", 0o755, CTX)).st_ino
        ckpt = (await ops.mkdir(job, b"c1", 0o755, CTX)).st_ino
        info, _ = await ops.create(ckpt, b"inventory.img", 0o600, W, CTX)
        await ops.write(info.fh, 0, b"x")
        await ops.release(info.fh)
        await ops.setxattr(ckpt, b"user.cedana.seal", b"1", CTX)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.rmdir(job, b"c1", CTX)
        assert e.value.errno == errno.ENOTEMPTY
        await ops.unlink(ckpt, b"inventory.img", CTX)
        await ops.rmdir(job, b"c1", CTX)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(job, b"c1", CTX)
        assert e.value.errno == errno.ENOENT

    run(main)
    assert fs_tree.catalog.checkpoints() == []


def test_statfs_reports_room(ops):
    s = run(ops.statfs, CTX)
    assert s.f_bavail > 0 and s.f_namemax == 255
