"""Operations: `make install` gives every user a working `cedana` where contrib/cedana.service runs
it, and the daemon tells systemd (Type=notify) when it is ready and when it stops.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures_daemon import NOBODY
from tests.fixtures_procs import ROOT, wait_for

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def install_root():
    root = Path(tempfile.mkdtemp(prefix="cedana-install-test-", dir="/tmp"))
    root.chmod(0o755)  # nobody must reach the installed command
    (root / "systemd").mkdir()
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")


def test_make_install_gives_nobody_a_working_cedana_and_the_unit(install_root, daemon):
    env = dict(os.environ) | {"INSTALL_VENV": str(install_root / "venv"), "PREFIX": str(install_root / "prefix"),
                              "SYSTEMD_DIR": str(install_root / "systemd")}
    subprocess.run(["bash", "scripts/install.sh"], cwd=str(ROOT), env=env, check=True, timeout=580,
                   capture_output=True)
    cedana = install_root / "prefix" / "bin" / "cedana"
    # Nothing on the way to the interpreter may be closed to other users (no pyenv under /root).
    python = Path(os.path.realpath(install_root / "venv" / "bin" / "python3"))
    for part in [python, *python.parents]:
        assert part.stat().st_mode & 0o001, f"{part} is closed to other users"
    version = as_nobody(str(cedana), "version")
    assert version.returncode == 0 and version.stdout.startswith("cedana "), version.stderr
    listed = as_nobody(str(cedana), "job", "list", "--output", "json", env=daemon.env | {"HOME": "/"})
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    unit = (install_root / "systemd" / "cedana.service").read_text()
    assert f"ExecStart={cedana} daemon start" in unit
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert (install_root / "prefix" / "share" / "man" / "man1" / "cedana-attach.1").exists()
    shipped = (ROOT / "contrib" / "cedana.service").read_text()
    assert "ExecStart=/usr/local/bin/cedana daemon start" in shipped  # where `make install` puts it by default


def test_daemon_notifies_systemd_ready_and_stopping(daemon_env):
    sock_path = daemon_env.root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(120)
        daemon_env.env["NOTIFY_SOCKET"] = str(sock_path)
        daemon_env.start()
        assert sock.recv(256) == b"READY=1"
        assert daemon_env.cedana("daemon", "check").returncode == 0  # ready means it answers
        daemon_env.cedana("daemon", "stop", check=True)
        assert sock.recv(256) == b"STOPPING=1"
    wait_for(lambda: daemon_env.proc.poll() is not None, what="the daemon to exit")
