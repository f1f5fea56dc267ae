"""Unit tier: the mount's tree (cedanafs.catalog.tree) and its control table (cedanafs.fuse.xattrs)
over a memory store, with no FUSE at all."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest

from cedanafs.catalog import ROOT_INODE, derive_inode
from cedanafs.errors import CedanaError, FsError
from cedanafs.fuse import xattrs
from tests.fixtures_procs import wait_for

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

W = os.O_WRONLY | os.O_CREAT


def setx(v, inode, name, value):
    xattrs.set(v, inode, name, value)


def getx(v, inode, name):
    return xattrs.get(v, inode, name)


def err(code):
    return _Raises(code)


class _Raises:
    def __init__(self, code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        assert typ is FsError, f"expected FsError({errno.errorcode[self.code]}), got {typ and typ.__name__}"
        assert exc.errno == self.code, f"expected {errno.errorcode[self.code]}, got {errno.errorcode[exc.errno]}"
        return True


def jobs(v):
    return v.lookup(ROOT_INODE, "jobs").inode


def pending(v, job="j1", name="c1"):
    j = v.lookup(jobs(v), job).inode if job in dict(v.readdir(jobs(v))) else v.mkdir(jobs(v), job, 0o755).inode
    return v.mkdir(j, name, 0o755).inode


def put(v, ckpt, name, data, chunk=1 << 16):
    fh, _ = v.create(ckpt, name, 0o600, W)
    for off in range(0, len(data), chunk):
        v.write(fh, off, data[off:off + chunk])
    v.flush(fh)
    v.release(fh)


def cat(v, ckpt, name, size=1 << 30):
    fh = v.open(v.lookup(ckpt, name).inode, os.O_RDONLY)
    try:
        return v.read(fh, 0, size)
    finally:
        v.release(fh)


def sealed_checkpoint(v, job="j1", name="c1", files=None):
    c = pending(v, job, name)
    for fname, data in (files or {"inventory.img": b"inv", "pages-1.img": os.urandom(300_000)}).items():
        put(v, c, fname, data)
    setx(v, c, "user.cedana.seal", b"1")
    return c


def test_empty_tree_has_jobs_dir(fs_tree):
    names = [n for n, _ in fs_tree.tree.readdir(ROOT_INODE)]
    assert names == ["jobs"]
    assert stat.S_ISDIR(fs_tree.tree.getattr(jobs(fs_tree.tree)).mode)
    assert fs_tree.tree.readdir(jobs(fs_tree.tree)) == []


def test_lookup_missing_is_enoent(fs_tree):
    with err(errno.ENOENT):
        fs_tree.tree.lookup(jobs(fs_tree.tree), "nope")
    with err(errno.ENOENT):
        fs_tree.tree.getattr(12345)


def test_write_seal_read_back(fs_tree):
    v = fs_tree.tree
    big = os.urandom(1_000_000)
    c = pending(v)
    put(v, c, "inventory.img", b"inventory")
    put(v, c, "pages-1.img", big)
    assert getx(v, c, "user.cedana.state") == b"pending"
    setx(v, c, "user.cedana.seal", b"1")
    assert getx(v, c, "user.cedana.state") == b"sealed"
    assert cat(v, c, "pages-1.img") == big
    assert cat(v, c, "inventory.img") == b"inventory"
    m = fs_tree.catalog.load("j1", "c1")
    assert {f.path: f.size for f in m.files} == {"inventory.img": 9, "pages-1.img": len(big)}


def test_writes_stream_into_the_store_before_close(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    fh, _ = v.create(c, "pages-1.img", 0o600, W)
    before = len(list(fs_tree.store.backend.list("chunks-b3/")))
    for i in range(16):
        v.write(fh, i << 16, os.urandom(1 << 16))
    # Chunks of 64 KiB are uploaded while the file is still open.
    assert len(list(fs_tree.store.backend.list("chunks-b3/"))) > before
    v.flush(fh)
    v.release(fh)


def test_reads_at_offsets_and_past_end(fs_tree):
    v = fs_tree.tree
    data = os.urandom(200_000)
    c = sealed_checkpoint(v, files={"inventory.img": b"x", "f": data})
    fh = v.open(v.lookup(c, "f").inode, os.O_RDONLY)
    assert v.read(fh, 70_000, 100_000) == data[70_000:170_000]
    assert v.read(fh, 199_990, 100) == data[199_990:]
    assert v.read(fh, 300_000, 10) == b""
    v.release(fh)


def test_sealed_checkpoint_is_read_only(fs_tree):
    v = fs_tree.tree
    c = sealed_checkpoint(v)
    f = v.lookup(c, "inventory.img").inode
    with err(errno.EROFS):
        v.create(c, "new", 0o600, W)
    with err(errno.EROFS):
        v.open(f, os.O_WRONLY)
    with err(errno.EROFS):
        v.setattr(f, mode=0o777)
    with err(errno.EROFS):
        v.setattr(f, size=0)
    with err(errno.EROFS):
        v.rename(c, "inventory.img", c, "other")
    with err(errno.EROFS):
        setx(v, c, "user.cedana.meta.x", b"1")
    # A change that changes nothing is allowed (rsync -a may set what is already there).
    a = v.getattr(f)
    assert v.setattr(f, mode=a.mode, mtime_ns=a.mtime_ns) == a
    # Sealing again is harmless.
    setx(v, c, "user.cedana.seal", b"1")


def test_open_handle_cannot_write_after_seal(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "inventory.img", b"inv")
    fh = v.open(v.lookup(c, "inventory.img").inode, os.O_WRONLY)
    setx(v, c, "user.cedana.seal", b"1")  # finished content, only not released yet: fine
    with err(errno.EROFS):
        v.write(fh, 3, b"more")
    v.release(fh)


def test_seal_needs_inventory(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "pages-1.img", b"abc")
    with err(errno.EINVAL):
        setx(v, c, "user.cedana.seal", b"1")
    assert b"inventory.img is missing" in getx(v, c, "user.cedana.error")
    assert getx(v, c, "user.cedana.state") == b"pending"
    assert fs_tree.catalog.checkpoints() == []


def test_seal_refuses_file_still_being_written(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "inventory.img", b"inv")
    fh, _ = v.create(c, "pages-1.img", 0o600, W)
    v.write(fh, 0, os.urandom(100_000))
    with err(errno.EBUSY):
        setx(v, c, "user.cedana.seal", b"1")
    v.flush(fh)
    v.release(fh)
    setx(v, c, "user.cedana.seal", b"1")


def test_pending_checkpoint_is_never_latest_nor_in_catalog(fs_tree):
    v = fs_tree.tree
    sealed_checkpoint(v, "j1", "c1")
    c2 = pending(v, "j1", "c2")
    put(v, c2, "inventory.img", b"inv")
    j = v.lookup(jobs(v), "j1").inode
    assert v.readlink(v.lookup(j, "latest").inode) == "c1"
    assert [i.id for i in fs_tree.catalog.checkpoints("j1")] == ["c1"]
    setx(v, c2, "user.cedana.seal", b"1")
    assert v.readlink(v.lookup(j, "latest").inode) == "c2"


def test_rsync_pattern(fs_tree):
    """Temp name, write, fsync, utimens, chmod, rename over an existing file, unlink of a temp."""
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "pages-1.img", b"old")
    fh, a = v.create(c, ".pages-1.img.Ab12Cd", 0o600, W | os.O_EXCL)
    v.write(fh, 0, b"new content")
    v.fsync(fh)
    v.flush(fh)
    v.release(fh)
    v.setattr(a.inode, mtime_ns=1_600_000_000_123_456_789)
    v.setattr(a.inode, mode=0o640)
    v.rename(c, ".pages-1.img.Ab12Cd", c, "pages-1.img")
    fh, _ = v.create(c, ".junk.XyZ", 0o600, W)
    v.release(fh)
    v.unlink(c, ".junk.XyZ")
    put(v, c, "inventory.img", b"inv")
    v.setattr(c, mtime_ns=1_500_000_000_000_000_001, mode=0o750)
    assert sorted(n for n, _ in v.readdir(c)) == ["inventory.img", "pages-1.img"]
    setx(v, c, "user.cedana.seal", b"1")
    view = fs_tree.new_view()
    view.refresh(force=True)
    vc = view.lookup(view.lookup(jobs(view), "j1").inode, "c1")
    # Times and sizes are kept; a sealed checkpoint is its owner's alone whatever modes the writer set.
    assert (vc.mode & 0o7777, vc.mtime_ns) == (0o700, 1_500_000_000_000_000_001)
    f = view.lookup(vc.inode, "pages-1.img")
    assert (f.mode & 0o7777, f.mtime_ns, f.size) == (0o600, 1_600_000_000_123_456_789, len(b"new content"))
    assert cat(view, vc.inode, "pages-1.img") == b"new content"


def test_non_sequential_writes_spill_and_come_out_right(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    data = bytearray(os.urandom(300_000))
    fh, _ = v.create(c, "f", 0o600, W)
    v.write(fh, 0, bytes(data[:200_000]))
    v.write(fh, 100_000, b"X" * 1000)  # back into streamed bytes
    data[100_000:101_000] = b"X" * 1000
    v.write(fh, 200_000, bytes(data[200_000:]))
    v.write(fh, 400_000, b"tail")  # a hole
    data += bytes(100_000) + b"tail"
    assert v.read(fh, 99_990, 20) == bytes(data[99_990:100_010])  # reads of a pending file work
    v.flush(fh)
    v.release(fh)
    assert cat(v, c, "f") == bytes(data)


def test_truncate_and_o_trunc_on_pending_file(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "f", b"0123456789")
    f = v.lookup(c, "f").inode
    assert v.setattr(f, size=4).size == 4
    assert cat(v, c, "f") == b"0123"
    assert v.setattr(f, size=0).size == 0
    fh = v.open(f, os.O_WRONLY | os.O_TRUNC)
    v.write(fh, 0, b"again")
    v.release(fh)
    assert cat(v, c, "f") == b"again"


def test_stable_inodes_and_attributes_across_views(fs_tree):
    v = fs_tree.tree
    sealed_checkpoint(v)
    view = fs_tree.new_view()
    view.refresh(force=True)

    def walk(t):
        out = {}
        for jname, ja in t.readdir(jobs(t)):
            out[jname] = ja
            for cname, ca in t.readdir(ja.inode):
                out[f"{jname}/{cname}"] = ca
                if stat.S_ISDIR(ca.mode):
                    for fname, fa in t.readdir(ca.inode):
                        out[f"{jname}/{cname}/{fname}"] = fa
        return out

    first, second = walk(v), walk(view)
    assert set(first) == {"j1", "j1/c1", "j1/latest", "j1/c1/inventory.img", "j1/c1/pages-1.img"}
    for key in first:
        a, b = first[key], second[key]
        assert (a.inode, a.mode, a.size, a.mtime_ns) == (b.inode, b.mode, b.size, b.mtime_ns), key
    # Derived from the name and the commit: the same on every view, another for another commit.
    commit = fs_tree.catalog.load("j1", "c1").commit
    assert first["j1/c1"].inode == derive_inode(first["j1"].inode, f"c1\0{commit}")


def test_other_writer_commits_appear_after_refresh(fs_tree):
    v = fs_tree.tree
    other = fs_tree.new_view()
    other.refresh(force=True)
    sealed_checkpoint(other, "remote-job", "r1")
    # refresh_interval=0 in this fixture: the next listing sees the other writer's commit.
    names = dict(v.readdir(jobs(v)))
    assert "remote-job" in names
    assert cat(v, v.lookup(names["remote-job"].inode, "r1").inode, "inventory.img") == b"inv"


def test_rm_r_of_sealed_checkpoint_deletes_it(fs_tree):
    v = fs_tree.tree
    c = sealed_checkpoint(v, "j1", "c1")
    sealed_checkpoint(v, "j1", "c2")
    j = v.lookup(jobs(v), "j1").inode
    with err(errno.ENOTEMPTY):
        v.rmdir(j, "c2")
    c2 = v.lookup(j, "c2").inode
    for name, _ in v.readdir(c2):
        v.unlink(c2, name)
    v.rmdir(j, "c2")
    assert [i.id for i in fs_tree.catalog.checkpoints("j1")] == ["c1"]
    assert v.readlink(v.lookup(j, "latest").inode) == "c1"
    for name, _ in v.readdir(c):
        v.unlink(c, name)
    v.rmdir(j, "c1")
    with err(errno.EPERM):
        v.create(j, "x", 0o600, W)
    v.rmdir(jobs(v), "j1")
    assert v.readdir(jobs(v)) == []
    assert fs_tree.catalog.checkpoints() == []


def test_rm_r_of_pending_checkpoint(fs_tree):
    """`rm -r` of a checkpoint being written: it is gone, its store session ends (no lease is
    left to hold back GC), nothing is committed, and the name can be written afresh."""
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "inventory.img", b"inv")
    put(v, c, "pages-1.img", os.urandom(300_000))  # chunks uploaded under the session's lease
    assert list(fs_tree.store.backend.list("leases/"))
    j = v.lookup(jobs(v), "j1").inode
    with err(errno.ENOTEMPTY):
        v.rmdir(j, "c1")
    for name, _ in v.readdir(c):
        v.unlink(c, name)
    v.rmdir(j, "c1")
    assert "c1" not in dict(v.readdir(j))
    with err(errno.ENOENT):
        v.getattr(c)
    assert list(fs_tree.store.backend.list("leases/")) == []
    assert fs_tree.catalog.checkpoints() == [] and list(fs_tree.store.backend.list("manifests/")) == []
    again = v.mkdir(j, "c1", 0o755).inode
    assert v.readdir(again) == [] and getx(v, again, "user.cedana.state") == b"pending"


def test_autoseal_rule(fs_tree):
    v = fs_tree.tree
    c = pending(v)
    put(v, c, "pages-1.img", b"p")
    fs_tree.clock[0] += 100
    assert v.autoseal_due() == []  # no inventory.img: never an import
    put(v, c, "inventory.img", b"inv")
    assert v.autoseal_due() == []  # changed just now
    fh = v.open(v.lookup(c, "pages-1.img").inode, os.O_RDONLY)
    fs_tree.clock[0] += 6
    assert v.autoseal_due() == []  # a file is open
    v.release(fh)
    assert v.autoseal_due() == [c]
    setx(v, c, "user.cedana.autoseal", b"0")
    assert v.autoseal_due() == []


def test_names_and_places(fs_tree):
    v = fs_tree.tree
    with err(errno.EINVAL):
        v.mkdir(jobs(v), "..bad", 0o755)
    j = v.mkdir(jobs(v), "j1", 0o755).inode
    with err(errno.EINVAL):
        v.mkdir(j, "latest", 0o755)
    with err(errno.EPERM):
        v.create(jobs(v), "file", 0o600, W)
    with err(errno.EPERM):
        v.create(j, "file", 0o600, W)
    c = v.mkdir(j, "c1", 0o755).inode
    with err(errno.EEXIST):
        v.mkdir(j, "c1", 0o755)
    with err(errno.EPERM):
        v.mkdir(c, "sub", 0o755)
    c2 = v.mkdir(j, "c2", 0o755).inode
    put(v, c, "f", b"1")
    with err(errno.EXDEV):
        v.rename(c, "f", c2, "f")


@pytest.mark.expect_warnings
def test_corrupt_chunk_is_eio_and_not_refetched(fs_tree):
    v = fs_tree.tree
    data = os.urandom(200_000)
    c = sealed_checkpoint(v, files={"inventory.img": b"inv", "f": data})
    ref = fs_tree.catalog.load("j1", "c1").file("f").chunks[0]
    key = next(k for k in fs_tree.store.backend.list("chunks-b3/") if ref.digest in k)
    blob = bytearray(fs_tree.store.backend.get(key))
    blob[-1] ^= 0xFF
    fs_tree.store.backend.put(key, bytes(blob))
    fs_tree.store.cache.discard(ref.digest)
    gets = []
    real_get = fs_tree.store.backend.get
    fs_tree.store.backend.get = lambda k: (gets.append(k), real_get(k))[1]
    fh = v.open(v.lookup(c, "f").inode, os.O_RDONLY)
    for _ in range(3):
        with pytest.raises(Exception) as info:
            v.read(fh, 0, 1000)
        assert "corrupt" in str(info.value) or getattr(info.value, "errno", None) == errno.EIO
    assert len([k for k in gets if ref.digest in k]) <= 1


def test_missing_chunk_is_eio_and_not_refetched(fs_tree):
    v = fs_tree.tree
    data = os.urandom(200_000)
    c = sealed_checkpoint(v, files={"inventory.img": b"inv", "f": data})
    ref = fs_tree.catalog.load("j1", "c1").file("f").chunks[1]
    fs_tree.store.backend.delete(next(k for k in fs_tree.store.backend.list("chunks-b3/") if ref.digest in k))
    fs_tree.store.cache.discard(ref.digest)
    gets = []
    real_get = fs_tree.store.backend.get
    fs_tree.store.backend.get = lambda k: (gets.append(k), real_get(k))[1]
    fh = v.open(v.lookup(c, "f").inode, os.O_RDONLY)
    assert v.read(fh, 0, 1000) == data[:1000]  # the chunks that are there still read
    for _ in range(3):
        with pytest.raises(CedanaError, match="missing"):
            v.read(fh, 100_000, 1000)
    assert len([k for k in gets if ref.digest in k]) == 1
    assert b"missing" in getx(v, c, "user.cedana.error")
    v.release(fh)


@pytest.mark.expect_warnings
def test_store_failure_while_writing_fails_the_file_and_the_seal(fs_tree):
    from cedanafs.streamer import BackendError

    v = fs_tree.tree
    c = pending(v)
    put(v, c, "inventory.img", b"inv")
    real_put = fs_tree.store.backend.put

    def failing_put(key, data):
        if key.startswith("chunks-b3/"):
            raise BackendError("disk on fire")
        return real_put(key, data)

    fs_tree.store.backend.put = failing_put
    fh, _ = v.create(c, "pages-1.img", 0o600, W)
    with pytest.raises(Exception) as info:
        for i in range(64):
            v.write(fh, i << 16, os.urandom(1 << 16))
        v.flush(fh)
    assert "disk on fire" in str(info.value)
    v.release(fh)
    fs_tree.store.backend.put = real_put
    with pytest.raises(Exception):
        setx(v, c, "user.cedana.seal", b"1")  # never a manifest with a hole in a file
    assert fs_tree.catalog.checkpoints() == []
    assert getx(v, c, "user.cedana.state") == b"pending"
    # Rewriting the file from the start makes it usable again.
    fh = v.open(v.lookup(c, "pages-1.img").inode, os.O_WRONLY | os.O_TRUNC)
    v.write(fh, 0, b"fine now")
    v.flush(fh)
    v.release(fh)
    setx(v, c, "user.cedana.seal", b"1")
    assert cat(v, c, "pages-1.img") == b"fine now"


@pytest.mark.expect_warnings
def test_store_down_during_refresh_serves_the_known_tree(fs_tree, caplog):
    from cedanafs.streamer import TemporaryFailure

    v = fs_tree.tree
    sealed_checkpoint(v)

    def down(*args, **kw):
        raise TemporaryFailure("store unreachable")

    fs_tree.catalog.refresh = down
    assert "j1" in dict(v.readdir(jobs(v)))
    assert "store unreachable" in caplog.text


# --- no store I/O under the tree lock ---------------------------------------------------------

class GatedBackend:
    """A memory store whose chunk and manifest writes wait at a gate: a store as slow as we like."""

    def __init__(self, name):
        from cedanafs.streamer.backends.memory import MemoryBackend

        class _Gated(MemoryBackend):
            def put(inner, key, data):
                self.wait(key)
                super().put(key, data)

            def create(inner, key, data):
                self.wait(key)
                super().create(key, data)

        self.gate = threading.Event()
        self.gate.set()
        self.blocked = 0
        self._lock = threading.Lock()
        self.backend = _Gated(name)

    def wait(self, key):
        if key.startswith(("chunks-b3/", "manifests/")) and not self.gate.is_set():
            with self._lock:
                self.blocked += 1
            assert self.gate.wait(60), "the gate was never opened"


def _in_thread(fn, *args):
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _stream(v, ckpt, name, size):
    """Open a file and write `size` bytes in order: its chunks go to the store as they come."""
    fh, _ = v.create(ckpt, name, 0o600, W)
    for off in range(0, size, 1 << 16):
        v.write(fh, off, os.urandom(1 << 16))
    return fh


def test_tree_answers_while_the_store_is_slow(tmp_path):
    """`ls` and getxattr on other paths answer at once while a big file is being finished and
    sealed, and other big files are truncated, over a store that does not answer meanwhile."""
    from cedanafs.catalog import Catalog, Tree
    from cedanafs.streamer import ChunkerSpec, Store, StoreSession

    gated = GatedBackend(f"slow-{os.getpid()}-{id(tmp_path)}")
    store = Store(gated.backend, chunker=ChunkerSpec.for_size("fixed", 64 << 10), memory_limit=16 << 20)
    v = Tree(Catalog(store.backend), StoreSession(store, spill_dir=str(tmp_path)), refresh_interval=0)
    threads = []
    try:
        v.refresh(force=True)
        c0 = sealed_checkpoint(v, "other", "c0")
        c1, c3 = pending(v, "j1", "c1"), pending(v, "j2", "c3")
        put(v, c1, "inventory.img", b"inv")
        gated.gate.clear()  # from here on the store does not answer writes
        big = _stream(v, c1, "pages-1.img", 1 << 20)
        first, second = _stream(v, c3, "pages-1.img", 1 << 20), _stream(v, c3, "pages-2.img", 1 << 20)

        def release_and_seal():
            v.release(big)
            return v.seal(c1)

        threads.append(_in_thread(release_and_seal))
        threads.append(_in_thread(v.open, v.lookup(c3, "pages-1.img").inode, os.O_WRONLY | os.O_TRUNC))
        threads.append(_in_thread(lambda: v.setattr(v.lookup(c3, "pages-2.img").inode, size=10)))
        wait_for(lambda: gated.blocked >= 8, timeout=20, what="writers blocked on the slow store")
        time.sleep(0.3)  # let every thread reach its store call

        def probe():
            started = time.monotonic()
            names = [n for n, _ in v.readdir(jobs(v))]
            other = v.lookup(jobs(v), "other").inode
            assert [n for n, _ in v.readdir(other)] == ["c0", "latest"]
            assert getx(v, c0, "user.cedana.state") == b"sealed"
            assert getx(v, ROOT_INODE, "user.cedana.pid") == str(os.getpid()).encode()
            assert getx(v, c3, "user.cedana.state") == b"pending"
            return names, time.monotonic() - started

        t, box = _in_thread(probe)
        t.join(timeout=5)
        assert not t.is_alive(), "ls/getxattr waited for the store: a lock is held across store I/O"
        assert "error" not in box, box.get("error")
        names, took = box["value"]
        assert set(names) == {"other", "j1", "j2"} and took < 1.0
    finally:
        gated.gate.set()
        for t, _ in threads:
            t.join(timeout=60)
    for t, box in threads:
        assert not t.is_alive() and "error" not in box, box.get("error")
    sealed = threads[0][1]["value"]
    assert sealed.name == "j1/c1" and sealed.file("pages-1.img").size == 1 << 20
    assert v.status(c1).state == "sealed" and cat(v, c1, "inventory.img") == b"inv"
    assert v.getattr(v.lookup(c3, "pages-2.img").inode).size == 10
    v.release(threads[1][1]["value"])
    for fh in (first, second):
        v.release(fh)
    for name in ("pages-1.img", "pages-2.img"):
        v.unlink(c3, name)
    v.rmdir(v.lookup(jobs(v), "j2").inode, "c3")
    v.close()
    store.close()
def test_a_checkpoint_belongs_to_its_owner_on_every_view(fs_tree):
    """Owner from the manifest (the dumper's uid meta, else the writer): 0700/0600 on any machine."""
    v = fs_tree.tree
    j = v.mkdir(jobs(v), "userjob", 0o755, uid=1000, gid=1000).inode
    c = v.mkdir(j, "c1", 0o755, uid=1000, gid=1000).inode  # an import by uid 1000 (rsync/cp)
    fh, _ = v.create(c, "inventory.img", 0o644, W, uid=1000, gid=1000)
    v.write(fh, 0, b"inv")
    v.release(fh)
    xattrs.set(v, c, "user.cedana.seal", b"1")
    d = pending(v, "dumped", "c2")  # made by root, for a process of uid 4242 (what a dump records)
    put(v, d, "inventory.img", b"inv")
    xattrs.set(v, d, "user.cedana.meta.uid", b"4242")
    xattrs.set(v, d, "user.cedana.meta.gid", b"4343")
    xattrs.set(v, d, "user.cedana.seal", b"1")
    view = fs_tree.new_view()  # another machine reading the same manifests
    view.refresh(force=True)
    for job, cid, owner in (("userjob", "c1", (1000, 1000)), ("dumped", "c2", (4242, 4343))):
        jd = view.lookup(jobs(view), job)
        ck = view.lookup(jd.inode, cid)
        f = view.lookup(ck.inode, "inventory.img")
        assert [(a.mode & 0o7777, a.uid, a.gid) for a in (jd, ck, f)] == \
            [(0o700, *owner), (0o700, *owner), (0o600, *owner)]
        # `latest` lives in the private job dir; what it leads to is the same private checkpoint
        assert view.readlink(view.lookup(jd.inode, "latest").inode) == cid


def test_chmod_of_a_sealed_checkpoint_never_opens_it(fs_tree):
    v = fs_tree.tree
    c = sealed_checkpoint(v)
    f = v.lookup(c, "pages-1.img").inode
    # What `rsync -a` of the same source does again: asks for the source's 0644/0755; nothing changes.
    assert v.setattr(f, mode=0o644).mode & 0o7777 == 0o600
    assert v.setattr(c, mode=0o755).mode & 0o7777 == 0o700
    with err(errno.EROFS):
        v.setattr(f, mode=0o400)  # an owner-bit change is a change, refused on a sealed checkpoint
