"""One identity per committed checkpoint, over a shared moto (S3) bucket.

Two catalogs, each with its own database and store client, stand in for two machines. A name is
deleted and committed again on one while the other is not refreshing; afterwards the other lists
the new checkpoint, serves its bytes, and its GC deletes none of its chunks.
"""

from __future__ import annotations

import os
import stat
import time

import pytest

from cedanafs.catalog import Catalog, FileEntry, Tree
from cedanafs.streamer import ChunkerSpec, Store, StoreSession, open_backend

pytestmark = [pytest.mark.conformance, pytest.mark.slow, pytest.mark.timeout(180)]


def _machine(url, db):
    store = Store(open_backend(url), chunker=ChunkerSpec.for_size("fixed", 64 << 10), memory_limit=8 << 20)
    return store, Catalog(store.backend, db, scope=store.url)


def _commit(store, catalog, files):
    entries = []
    with store.open_lease() as lease:
        for path, data in files.items():
            entries.append(FileEntry(path=path, mode=0o600, mtime_ns=1, content=store.write_bytes(data, lease)))
    return catalog.commit_files("train", entries, name="c1", kind="import", host="a")


def _read(tree, path):
    node = tree.lookup(1, "jobs").inode
    for part in path.split("/")[:-1]:
        node = tree.lookup(node, part).inode
    fh = tree.open(tree.lookup(node, path.rsplit("/", 1)[-1]).inode, os.O_RDONLY)
    try:
        return tree.read(fh, 0, 1 << 30)
    finally:
        tree.release(fh)


def test_a_name_committed_again_elsewhere_is_the_new_checkpoint(s3_url, tmp_path):
    store_a, cat_a = _machine(s3_url, tmp_path / "a.db")
    store_b, cat_b = _machine(s3_url, tmp_path / "b.db")
    tree_b = Tree(cat_b, StoreSession(store_b, spill_dir=str(tmp_path)), refresh_interval=0)
    try:
        old = {"inventory.img": b"inv-1", "pages-1.img": os.urandom(600_000)}
        first = _commit(store_a, cat_a, old)
        tree_b.refresh(force=True)
        assert _read(tree_b, "train/c1/pages-1.img") == old["pages-1.img"]  # b has loaded and cached it
        old_inode = tree_b.lookup(tree_b.lookup(tree_b.lookup(1, "jobs").inode, "train").inode, "c1").inode

        # On a, while b does nothing: the name is deleted and committed again with other bytes.
        cat_a.delete("train", "c1")
        new = {"inventory.img": b"inv-2", "pages-1.img": os.urandom(700_000)}
        second = _commit(store_a, cat_a, new)
        assert second.commit != first.commit

        # b lists the new checkpoint (a new directory to the kernel) and serves its bytes.
        job = tree_b.lookup(tree_b.lookup(1, "jobs").inode, "train").inode
        assert [n for n, _ in tree_b.readdir(job)] == ["c1", "latest"]
        c1 = tree_b.lookup(job, "c1")
        assert stat.S_ISDIR(c1.mode) and c1.inode != old_inode
        assert _read(tree_b, "train/c1/pages-1.img") == new["pages-1.img"]
        assert _read(tree_b, "train/c1/inventory.img") == b"inv-2"
        assert cat_b.load("train", "c1") == second

        # b's GC, with no grace at all, keeps every chunk of the new checkpoint. (S3 times have a
        # resolution of a second: wait until the new chunks are older than GC's own start.)
        time.sleep(1.5)
        result = store_b.collect_garbage(cat_b.referenced_digests, grace_seconds=0)
        assert result.deleted > 0  # the old checkpoint's chunks went
        assert all(store_a.chunks.exists(d) for d in second.digests())
        assert store_a.read_bytes(second.file("pages-1.img").content) == new["pages-1.img"]
    finally:
        tree_b.close()
        for c in (cat_a, cat_b):
            c.close()
        for s in (store_a, store_b):
            s.close()


def test_two_writers_of_one_name_never_leave_two_manifests(s3_url, tmp_path):
    """Commits of one name from two machines: one wins, the other is refused; one manifest stays."""
    from cedanafs.errors import AlreadyExists

    store_a, cat_a = _machine(s3_url, tmp_path / "a.db")
    store_b, cat_b = _machine(s3_url, tmp_path / "b.db")
    try:
        won = _commit(store_a, cat_a, {"inventory.img": b"a"})
        with pytest.raises(AlreadyExists):
            _commit(store_b, cat_b, {"inventory.img": b"b"})
        keys = [k for k in store_a.backend.list("manifests/")]
        assert keys == [f"manifests/train/c1/{won.commit}.json"]
        assert cat_b.load("train", "c1") == won
    finally:
        for c in (cat_a, cat_b):
            c.close()
        for s in (store_a, store_b):
            s.close()
