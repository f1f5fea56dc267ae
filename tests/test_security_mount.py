"""Only a checkpoint's owner (and root) reads it: the mount, `dump process` outputs, private state.

Real daemon, mount, CRIU and kernel permission checks (the mount runs with default_permissions):
the reads are made as the user nobody, by a plain python3 under setpriv, and their errno is what
is asserted.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_daemon import ALIVE, NOBODY, wait_status
from tests.fixtures_procs import PROGRAMS, pid_alive, read_lines, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(300)]

SYSTEM_PYTHON = "/usr/bin/python3"
_PROBE = """
import errno, json, os, sys
out = {}
for kind, path in json.loads(sys.argv[1]):
    try:
        if kind == "read":
            with open(path, "rb") as f:
                f.read(4096)
        else:
            os.listdir(path)
        out[kind + " " + path] = "ok"
    except OSError as exc:
        out[kind + " " + path] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def as_nobody(*probes: tuple[str, Path]) -> list[str]:
    """What nobody gets for each (read|list, path), in order: 'ok' or the errno name."""
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, "-c", _PROBE,
            json.dumps([(k, str(p)) for k, p in probes])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout)
    return [answers[f"{k} {p}"] for k, p in probes]


def mode_owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid


def criu_can_dump_other_users() -> bool:
    """CRIU reads a process's rlimits with prlimit(), which needs CAP_SYS_RESOURCE for another uid."""
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


NEEDS_CAP = pytest.mark.skipif(not criu_can_dump_other_users(),
                               reason="root here lacks CAP_SYS_RESOURCE: CRIU cannot dump another user's process")


def dump_root_job(daemon) -> tuple[Path, Path]:
    out = daemon.root / "r.count"
    daemon.cedana("run", "process", "--jid", "rootsecret", "-o", daemon.root / "r.log", "--", sys.executable,
                  PROGRAMS / "counter.py", out, check=True)
    wait_for(lambda: len(read_lines(out)) >= 3, what="root's counter to count")
    daemon.cedana("dump", "job", "rootsecret", "--leave-running", check=True)
    return daemon.mount_dir / "jobs" / "rootsecret", Path(daemon.checkpoints("rootsecret")[0]["path"])


def test_mount_checkpoints_are_their_owners_alone(daemon, tmp_path):
    root_job, root_ckpt = dump_root_job(daemon)
    # Another user's checkpoint: not readable, not listable, not through `latest` either.
    assert as_nobody(("read", root_ckpt / "pages-1.img"), ("read", root_job / "latest" / "inventory.img"),
                     ("list", root_ckpt), ("list", root_job)) == ["EACCES"] * 4
    assert mode_owner(root_job) == (0o700, 0) and mode_owner(root_ckpt) == (0o700, 0)
    assert {mode_owner(p) for p in root_ckpt.iterdir()} == {(0o600, 0)}

    # An import keeps the writer's ownership: `rsync -a` of a copy that belongs to nobody.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(root_ckpt), str(copy)], check=True)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(copy)], check=True)
    imported = daemon.mount_dir / "jobs" / "imported"
    imported.mkdir()
    subprocess.run(["rsync", "-a", f"{copy}/", f"{imported}/c1/"], check=True, capture_output=True)
    daemon.cedana("checkpoint", "seal", imported / "c1", check=True)
    # One's own: readable and listable (once the kernel's 1 s attribute cache of the pending,
    # root-made job directory has expired).
    own = (("read", imported / "latest" / "pages-1.img"), ("list", imported / "c1"), ("list", imported))
    wait_for(lambda: as_nobody(*own) == ["ok"] * 3, timeout=10, what="nobody to read its own checkpoint")
    assert mode_owner(imported) == (0o700, NOBODY) and mode_owner(imported / "c1") == (0o700, NOBODY)
    assert {mode_owner(p) for p in (imported / "c1").iterdir()} == {(0o600, NOBODY)}
    assert as_nobody(("list", root_job)) == ["EACCES"]

    # The daemon's own state is root's: the catalog and job databases, the local store.
    for path in (daemon.db_path, daemon.db_path.with_name("jobs.db")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((daemon.root / "store").stat().st_mode) == 0o700


@NEEDS_CAP
def test_a_users_job_dumped_through_the_daemon_is_theirs(daemon):
    logs = daemon.root / "logs"
    logs.mkdir()
    logs.chmod(0o777)
    ran = daemon.cedana("run", "process", "--jid", "mine", "-o", logs / "n.log", "--", SYSTEM_PYTHON,
                        PROGRAMS / "counter.py", logs / "n.count", as_nobody=True)
    assert ran.returncode == 0, ran.stderr
    job = wait_status(daemon, "mine", ALIVE)
    wait_for(lambda: len(read_lines(logs / "n.count")) >= 3, what="nobody's counter to count")
    dumped = daemon.cedana("dump", "job", "mine", as_nobody=True)
    assert dumped.returncode == 0, dumped.stderr
    wait_for(lambda: not pid_alive(job["pid"]), what="nobody's dumped job to stop")
    my_job = daemon.mount_dir / "jobs" / "mine"
    own = (("read", my_job / "latest" / "pages-1.img"), ("list", my_job / "latest"), ("list", my_job))
    wait_for(lambda: as_nobody(*own) == ["ok"] * 3, timeout=10, what="nobody to read its own checkpoint")
    my_ckpt = my_job / os.readlink(my_job / "latest")
    assert mode_owner(my_job) == (0o700, NOBODY) and mode_owner(my_ckpt) == (0o700, NOBODY)
    assert {mode_owner(p) for p in my_ckpt.iterdir()} == {(0o600, NOBODY)}


@pytest.mark.parametrize("user", [0, pytest.param(NOBODY, marks=NEEDS_CAP)], ids=["root", "nobody"])
def test_dump_process_outputs_belong_to_the_process_owner(user, procs, cedana, tmp_path):
    tmp_path.chmod(0o755)
    proc = procs.start(["sleep", "600"], user=user, group=user, extra_groups=[])
    wait_for(lambda: pid_alive(proc.pid), what="sleep to start")
    for compression, name in (("gzip", "a"), ("none", "b")):
        cedana("dump", "process", proc.pid, "--dir", tmp_path, "--name", name, "--compression", compression,
               "--leave-running", "--no-server", check=True)
    assert mode_owner(tmp_path / "a.tar.gz") == (0o600, user)
    assert mode_owner(tmp_path / "b") == (0o700, user)
    assert {mode_owner(p) for p in (tmp_path / "b").iterdir()} == {(0o600, user)}
    assert (tmp_path / "b" / "pages-1.img").exists()
