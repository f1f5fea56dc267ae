"""Fixtures for the mount's tests: the tree over a memory store (unit tier) and a real mount (integration).

The real mount runs `cedana mount` in the background like a user would; teardown unmounts it
(lazily if something still holds it) and kills its server even when the test failed.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures_procs import wait_for

ROOT = Path(__file__).resolve().parent.parent
CEDANA = [sys.executable, "-m", "cedanafs.cli"]
_names = itertools.count()


until = wait_for  # the mount tests' name for the one polling helper


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


# --- unit tier: the tree over a memory store -------------------------------------------------

@dataclass
class TreeFixture:
    """A Tree over a fresh memory:// store, plus what a test needs to make a second view of it."""

    tree: object
    store: object
    catalog: object
    clock: list = field(default_factory=lambda: [1000.0])

    def new_view(self, **kw):
        from cedanafs.catalog import Catalog, Tree
        from cedanafs.streamer import StoreSession

        return Tree(Catalog(self.store.backend), StoreSession(self.store), **kw)


@pytest.fixture
def fs_tree(tmp_path):
    from cedanafs.catalog import Catalog, Tree
    from cedanafs.streamer import ChunkerSpec, Store, StoreSession, open_backend

    store = Store(open_backend(f"memory://fuse-test-{os.getpid()}-{next(_names)}"),
                  chunker=ChunkerSpec.for_size("fixed", 64 << 10), memory_limit=4 << 20)
    catalog = Catalog(store.backend)
    clock = [1000.0]
    tree = Tree(catalog, StoreSession(store, spill_dir=str(tmp_path)), refresh_interval=0, autoseal_after=5,
                clock=lambda: clock[0])
    tree.refresh(force=True)
    try:
        yield TreeFixture(tree, store, catalog, clock)
    finally:
        tree.close()
        store.close()


# --- integration tier: a real mount ------------------------------------------------------------

@dataclass
class Mount:
    """A `cedana mount` of a local store in a temp dir, driven through the real CLI."""

    base: Path
    mountpoint: Path
    config_dir: Path
    store: Path
    autoseal_after: float = 1.0

    @property
    def jobs(self) -> Path:
        return self.mountpoint / "jobs"

    @property
    def log(self) -> Path:
        return self.base / "state" / "mount.log"

    def cedana(self, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, "CEDANA_CONFIG_DIR": str(self.config_dir)}
        return subprocess.run([*CEDANA, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT), stdin=subprocess.DEVNULL, env=env, **kw)

    def mount(self) -> None:
        r = self.cedana("mount", self.mountpoint, "--autoseal-after", str(self.autoseal_after), timeout=90)
        assert r.returncode == 0, f"cedana mount failed: {r.stderr}"
        assert is_mounted(self.mountpoint)

    def umount(self) -> None:
        r = self.cedana("umount", self.mountpoint, timeout=90)
        assert r.returncode == 0, f"cedana umount failed: {r.stderr}"

    def server_pid(self) -> int:
        return int(os.getxattr(self.mountpoint, "user.cedana.pid"))

    def seal(self, ckpt: Path) -> None:
        os.setxattr(ckpt, "user.cedana.seal", b"1")

    def state(self, ckpt: Path) -> str:
        return os.getxattr(ckpt, "user.cedana.state").decode()

    def teardown(self) -> None:
        pid = None
        try:
            pid = self.server_pid()
        except (OSError, ValueError):
            pass
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_mount(base: Path, autoseal_after: float = 1.0, store: Path | None = None) -> Mount:
    """A mount's own config, database, cache and mount point under `base`; `store` may be shared."""
    config_dir = base / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    store = store or base / "store"
    (config_dir / "config.json").write_text(json.dumps({
        "store": {"url": str(store)},
        "db": {"path": str(base / "state" / "cedana.db")},
        "cache": {"dir": str(base / "cache" / "chunks"), "size": "1G"},
    }))
    mountpoint = base / "mnt"
    mountpoint.mkdir(exist_ok=True)
    return Mount(base, mountpoint, config_dir, store, autoseal_after)


@pytest.fixture
def mount_factory(tmp_path):
    """Make (not yet mounted) Mount objects; every one is unmounted and its server killed at teardown."""
    made: list[Mount] = []

    def factory(name: str = "m", autoseal_after: float = 1.0, store: Path | None = None) -> Mount:
        m = make_mount(tmp_path / name, autoseal_after, store)
        made.append(m)
        return m

    try:
        yield factory
    finally:
        for m in made:
            m.teardown()


@pytest.fixture
def mounted(mount_factory, monkeypatch):
    """A live `cedana mount` with a 1 s auto-seal rule; CEDANA_CONFIG_DIR points at its config."""
    m = mount_factory()
    monkeypatch.setenv("CEDANA_CONFIG_DIR", str(m.config_dir))
    m.mount()
    return m
