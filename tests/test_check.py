"""`cedana check`: it proves the CRIU it finds can dump and restore TCP sockets, and says which CRIU to
install when it cannot; `check --full` tells a kernel warning from a failure.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from cedanafs.criu import find_criu

pytestmark = [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(120)]


def fake_criu(tmp_path, body: str) -> str:
    """A criu wrapper: `body` runs first (shell), then the real CRIU with the same arguments."""
    path = tmp_path / "criu"
    path.write_text(f'#!/bin/sh\n{body}\nexec {find_criu()} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def rows(result) -> dict[str, dict]:
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_check_dumps_and_restores_tcp_sockets(cedana):
    result = cedana("check", "--output", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    found = rows(result)
    assert found["criu sockets"]["ok"], found["criu sockets"]
    assert "4.2" in found["criu"]["detail"]


def test_check_refuses_criu_4_1_and_names_the_version_to_install(cedana, tmp_path):
    criu = fake_criu(tmp_path, 'if [ "$1" = "--version" ]; then echo "Version: 4.1.1"; exit 0; fi')
    result = cedana("check", env=os.environ | {"CEDANA_CRIU_BINARY_PATH": criu})
    assert result.returncode == 8
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("criu "))
    assert "MISSING" in line and "4.1.1" in line and "install CRIU 4.2.1" in line, result.stdout


def test_check_fails_a_criu_that_cannot_dump_sockets(cedana, tmp_path):
    criu = fake_criu(tmp_path, 'if [ "$1" = "swrk" ]; then exit 1; fi')
    result = cedana("check", "--output", "json", env=os.environ | {"CEDANA_CRIU_BINARY_PATH": criu})
    assert result.returncode == 8
    probe = rows(result)["criu sockets"]
    assert not probe["ok"] and probe["required"] and "4.2.1" in probe["fix"], probe


def test_full_check_tells_a_kernel_warning_from_a_failure(cedana):
    result = cedana("check", "--full", "--output", "json")
    full = rows(result)["criu check --all"]
    assert result.returncode == 0, result.stdout
    if not full["ok"]:  # this machine's kernel lacks optional features: a warning, never a failure
        assert not full["required"] and full["detail"].startswith("kernel warning: "), full
