"""The spool's own housekeeping, without CRIU: used dirs removed in the background, and what
interrupted dumps or removals left behind cleared by the next dump."""

from __future__ import annotations

import os
import time

import pytest

from cedanafs.app import capture
from cedanafs.config import load_settings
from tests.fixtures_procs import spool_emptied

pytestmark = pytest.mark.unit


def _settings(root):
    return load_settings(None, None, environ={"CEDANA_SPOOL_DIR": str(root), "CEDANA_SPOOL_SIZE": "0"})


def test_a_used_spool_dir_is_moved_aside_at_once_and_removed(tmp_path):
    root = tmp_path / "spool"
    with capture.spool_dir(_settings(root), 1 << 20) as path:
        with open(os.path.join(path, "pages-1.img"), "wb") as f:
            f.write(os.urandom(1 << 20))
    assert not os.path.exists(path), "the dir is renamed out of the way before the command returns"
    spool_emptied(root)


def test_removals_that_never_finished_are_cleared_by_the_next_dump(tmp_path):
    root = tmp_path / "spool"
    root.mkdir()
    old = root / (capture.TRASH + "dump-old")
    old.mkdir()
    (old / "pages-1.img").write_bytes(b"x" * 4096)
    then = time.time() - capture.TRASH_AGE - 5
    os.utime(old, (then, then))
    fresh = root / (capture.TRASH + "dump-fresh")  # its rm may still be running: left to it
    fresh.mkdir()
    with capture.spool_dir(_settings(root), 1 << 20):
        assert not old.exists()
        assert fresh.exists()
