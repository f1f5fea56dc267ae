"""Unit tier: a sealed checkpoint with subdirectories (a container checkpoint keeps CRIU's images
in checkpoint/) shows them in the mount's tree, read-only, and `rm -r` works through them."""

from __future__ import annotations

import errno
import os

import pytest

from cedanafs.app.checkpoints import Checkpoints
from cedanafs.catalog.nodes import ROOT_INODE
from cedanafs.errors import FsError

pytestmark = [pytest.mark.ops, pytest.mark.timeout(60)]


def _lookup(v, *names):
    inode = ROOT_INODE
    for name in names:
        inode = v.lookup(inode, name).inode
    return inode


def _cat(v, inode):
    fh = v.open(inode, os.O_RDONLY)
    try:
        return v.read(fh, 0, 1 << 20)
    finally:
        v.release(fh)


def _container_checkpoint(fs_tree, tmp_path):
    src = tmp_path / "src"
    (src / "checkpoint" / "deeper").mkdir(parents=True)
    (src / "spec.dump").write_text("{}")
    (src / "checkpoint" / "inventory.img").write_bytes(b"inv")
    (src / "checkpoint" / "pages-1.img").write_bytes(os.urandom(200_000))
    (src / "checkpoint" / "deeper" / "x").write_bytes(b"deep")
    (src / "checkpoint" / "link").symlink_to("pages-1.img")
    (src / "checkpoint").chmod(0o700)
    Checkpoints(fs_tree.store, fs_tree.catalog).import_dir(src, "ctr", "c1", images="checkpoint")
    fs_tree.tree.refresh(force=True)
    return src


def test_subdirectories_are_shown_read_only(fs_tree, tmp_path):
    v = fs_tree.tree
    src = _container_checkpoint(fs_tree, tmp_path)
    images = _lookup(v, "jobs", "ctr", "c1", "checkpoint")
    assert sorted(n for n, _ in v.readdir(images)) == ["deeper", "inventory.img", "link", "pages-1.img"]
    assert v.getattr(images).mode & 0o7777 == 0o700
    assert _cat(v, _lookup(v, "jobs", "ctr", "c1", "checkpoint", "pages-1.img")) == \
        (src / "checkpoint" / "pages-1.img").read_bytes()
    assert _cat(v, _lookup(v, "jobs", "ctr", "c1", "checkpoint", "deeper", "x")) == b"deep"
    assert v.readlink(_lookup(v, "jobs", "ctr", "c1", "checkpoint", "link")) == "pages-1.img"
    with pytest.raises(FsError) as exc:
        v.create(images, "new", 0o600, os.O_WRONLY | os.O_CREAT)
    assert exc.value.errno in (errno.EPERM, errno.EROFS)


def test_rm_r_through_subdirectories_deletes_the_checkpoint(fs_tree, tmp_path):
    v = fs_tree.tree
    _container_checkpoint(fs_tree, tmp_path)

    def rm_r(parent, name):
        inode = v.lookup(parent, name).inode
        for child, attr in v.readdir(inode):
            if attr.mode & 0o170000 == 0o040000:
                rm_r(inode, child)
            else:
                v.unlink(inode, child)
        v.rmdir(parent, name)

    job = _lookup(v, "jobs", "ctr")
    with pytest.raises(FsError) as exc:
        v.rmdir(_lookup(v, "jobs", "ctr", "c1"), "checkpoint")
    assert exc.value.errno == errno.ENOTEMPTY
    rm_r(job, "c1")
    assert fs_tree.catalog.checkpoints("ctr") == []
