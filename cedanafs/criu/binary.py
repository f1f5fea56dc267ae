"""Finding the CRIU binary and asking it whether this kernel supports checkpoint/restore."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import NotReady

log = logging.getLogger(__name__)

# /usr/local first: the project's setup installs a working CRIU there when the distribution's fails.
CANDIDATES = ("/usr/local/sbin/criu", "/usr/local/bin/criu", "/usr/sbin/criu", "/usr/bin/criu")


@dataclass(frozen=True)
class CriuInfo:
    path: str
    version: str
    check_ok: bool
    check_output: str


def find_criu(configured: str = "") -> str:
    """The CRIU binary to use: the configured path, else the first installed candidate."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise NotReady(f"criu.binary_path {configured!r} is not an executable file")
        return configured
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("criu")
    if found:
        return found
    raise NotReady("CRIU is not installed: run `make setup` (it builds CRIU 4.x) or set criu.binary_path")


def _run(args: list[str], timeout: float = 60) -> tuple[int, str]:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def probe_criu(configured: str = "", full: bool = False) -> CriuInfo:
    """Version and `criu check` verdict. The RPC check() misreports on CRIU 4.1, so run the command."""
    path = find_criu(configured)
    _, version = _run([path, "--version"])
    version = version.splitlines()[0].removeprefix("Version: ").strip() if version else "unknown"
    args = [path, "check"] + (["--all"] if full else [])
    code, output = _run(args)
    ok = code == 0 and (not full or "Looks good" in output or output.strip() == "")
    log.debug("criu check (%s): rc=%s %s", path, code, output)
    return CriuInfo(path=path, version=version, check_ok=ok, check_output=output)
