"""Fixtures for tests that run a real `cedana daemon start` on a private socket, database and mount.

Everything lives under one temp dir that other users may traverse (the non-root tests connect to
the socket as nobody). Teardown, even after a failure: stop the daemon (SIGTERM, then SIGKILL),
kill every job process it recorded, stop a mount server left behind, unmount lazily, remove the dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures_procs import CEDANA, ROOT, wait_for

NOBODY = 65534
ALIVE = ("running", "sleep")
# Runs the CLI as nobody: import everything first (the interpreter's files may be unreadable to
# nobody), then drop the effective ids, as a non-root user's process would look on the socket.
_AS_NOBODY = (
    "import os, sys, difflib, gettext\n"  # click imports these lazily
    "import cedanafs.cli, cedanafs.daemon.client, cedanafs.app.jobs, cedanafs.app.process, cedanafs.catalog\n"
    "cedanafs.cli.load_commands()\n"  # the command modules too: `cedana` imports them when asked for
    f"os.setgroups([]); os.setegid({NOBODY}); os.seteuid({NOBODY})\n"
    "sys.argv = ['cedana', *sys.argv[1:]]\n"
    "cedanafs.cli.main()\n"
)


class DaemonHarness:
    """One daemon's private world and the means to drive it."""

    def __init__(self, root: Path):
        self.root = root
        self.address = root / "cedana.sock"
        self.mount_dir = root / "mnt"
        self.db_path = root / "db" / "cedana.db"
        self.log_path = root / "daemon.log"
        (root / "cfg").mkdir(mode=0o755)
        self.mount_dir.mkdir()
        self.env = dict(os.environ) | {
            "CEDANA_CONFIG_DIR": str(root / "cfg"), "CEDANA_ADDRESS": str(self.address),
            "CEDANA_MOUNT_DIR": str(self.mount_dir), "CEDANA_DB_PATH": str(self.db_path),
            "CEDANA_STORE_URL": str(root / "store"), "CEDANA_CACHE_DIR": str(root / "cache"),
            "CEDANA_LOG_LEVEL": "info", "CEDANA_JOB_LOG_DIR": str(root / "joblogs"),
        }
        (root / "joblogs").mkdir()
        (root / "joblogs").chmod(0o777)  # jobs of any user write their output here
        self.proc: subprocess.Popen | None = None

    # --- the daemon ---

    def spawn(self) -> subprocess.Popen:
        with open(self.log_path, "a") as log:
            return subprocess.Popen([*CEDANA, "daemon", "start"], env=self.env, cwd=str(ROOT),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def start(self, timeout: float = 60) -> subprocess.Popen:
        self.proc = self.spawn()
        wait_for(self._ready, timeout=timeout, what="the daemon to listen")
        return self.proc

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited ({self.proc.returncode}): {self.log_tail()}")
        return self.cedana("daemon", "check", timeout=30).returncode == 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.proc = None
        return code

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    # --- the command ---

    def cedana(self, *args, as_nobody: bool = False, check: bool = False, timeout: float = 180,
               **kwargs) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-c", _AS_NOBODY] if as_nobody else list(CEDANA)
        if "input" not in kwargs:
            kwargs.setdefault("stdin", subprocess.DEVNULL)
        result = subprocess.run([*argv, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                                env=self.env, cwd=str(ROOT), **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"cedana {' '.join(map(str, args))} failed ({result.returncode}):"
                                 f" {result.stderr.strip()}\n--- daemon log ---\n{self.log_tail()}")
        return result

    def json(self, *args, **kwargs):
        return json.loads(self.cedana(*args, "--output", "json", check=True, **kwargs).stdout)

    def jobs(self) -> dict[str, dict]:
        return {j["job"]: j for j in self.json("job", "list", "--all")}

    def job(self, jid: str) -> dict:
        return self.jobs()[jid]

    def checkpoints(self, jid: str) -> list[dict]:
        return self.json("job", "checkpoints", jid)

    # --- teardown ---

    def cleanup(self) -> None:
        self.stop()
        self._kill_jobs()
        self._stop_mount()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_jobs(self) -> None:
        db = self.db_path.with_name("jobs.db")
        if not db.exists():
            return
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT pid, start_time FROM jobs").fetchall()
        for pid, started in rows:
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - started) < 0.1:
                    for p in [proc, *proc.children(recursive=True)]:
                        p.kill()
            except psutil.Error:
                pass

    def _stop_mount(self) -> None:
        mp = str(self.mount_dir)
        try:
            server = int(os.getxattr(mp, "user.cedana.pid"))
        except (OSError, ValueError):
            server = None
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
        if server:
            try:
                os.kill(server, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def daemon_env():
    """A harness with no daemon started yet (tests that start, kill and restart it themselves)."""
    root = Path(tempfile.mkdtemp(prefix="cedana-daemon-test-", dir="/tmp"))
    root.chmod(0o755)
    harness = DaemonHarness(root)
    try:
        yield harness
    finally:
        harness.cleanup()


@pytest.fixture
def daemon(daemon_env):
    """A running daemon on a private socket, database, store and mount."""
    daemon_env.start()
    yield daemon_env


def wait_status(harness: DaemonHarness, jid: str, statuses: tuple[str, ...], timeout: float = 20) -> dict:
    def check():
        job = harness.jobs().get(jid)
        return job if job and job["status"] in statuses else None
    return wait_for(check, timeout=timeout, what=f"job {jid} to be {'/'.join(statuses)}")


def settle(seconds: float = 0.3) -> None:
    time.sleep(seconds)
