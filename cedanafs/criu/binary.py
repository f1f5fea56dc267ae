"""Finding the CRIU binary and asking it whether this kernel supports checkpoint/restore."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import NotReady

log = logging.getLogger(__name__)

REQUIRED_VERSION = (4, 2)
RECOMMENDED = "4.2.1"
# /usr/local first: the project's setup installs a working CRIU there when the distribution's fails.
CANDIDATES = ("/usr/local/sbin/criu", "/usr/local/bin/criu", "/usr/sbin/criu", "/usr/bin/criu")


@dataclass(frozen=True)
class CriuInfo:
    """An installed CRIU: its path, version, and what `criu check` said."""

    path: str
    version: str
    check_ok: bool
    check_output: str

    @property
    def version_ok(self) -> bool:
        """CRIU older than 4.2 cannot dump inet sockets on kernels >= 6.16 (SO_PASSCRED on TCP/UDP)."""
        return version_tuple(self.version) >= REQUIRED_VERSION


@dataclass(frozen=True)
class KernelCheck:
    """`criu check --all`: ok, or only warnings (features some trees need), or errors."""

    ok: bool
    warnings: tuple[str, ...]
    errors: tuple[str, ...]


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


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


def probe_criu(configured: str = "") -> CriuInfo:
    """Version and `criu check` verdict. The RPC check() misreports on CRIU 4.1, so run the command."""
    path = find_criu(configured)
    _, version = _run([path, "--version"])
    version = version.splitlines()[0].removeprefix("Version: ").strip() if version else "unknown"
    code, output = _run([path, "check"])
    log.debug("criu check (%s): rc=%s %s", path, code, output)
    return CriuInfo(path=path, version=version, check_ok=code == 0, check_output=output)


def check_all(path: str) -> KernelCheck:
    """`criu check --all`, which exits 1 even when the kernel only lacks optional features."""
    code, output = _run([path, "check", "--all"])
    lines = [ln.strip() for ln in output.splitlines()]
    warnings = tuple(ln.split("): ", 1)[-1] for ln in lines if ln.startswith("Warn"))
    errors = tuple(ln.split("): ", 1)[-1] for ln in lines if ln.startswith("Error"))
    if code != 0 and not errors and "Looks good" not in output:
        errors = (output or f"criu check --all exited with {code}",)
    return KernelCheck(ok=code == 0 and not warnings, warnings=warnings, errors=errors)
