"""Readiness check (`cedana check`): CRIU, its version, its kernel check, a real dump and restore of
TCP sockets, userfaultfd, FUSE, privileges.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass

from .. import criu
from ..config import Settings
from ..errors import NotReady

INSTALL = f"install CRIU {criu.RECOMMENDED}: run `make setup` (it builds it) or set criu.binary_path"


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version_item(info: criu.CriuInfo) -> CheckItem:
    if info.version_ok:
        return CheckItem("criu", True, f"{info.path} (version {info.version})")
    return CheckItem("criu", False, f"{info.path} is CRIU {info.version}: older than 4.2, it cannot checkpoint"
                     " TCP/UDP sockets on current kernels", INSTALL)


def _kernel_item(info: criu.CriuInfo, full: bool) -> CheckItem:
    if not full:
        verdict = (info.check_output.splitlines() or ["Looks good."])[-1]
        return CheckItem("criu check", info.check_ok, verdict,
                         "" if info.check_ok else f"this CRIU does not work on this kernel: {INSTALL}")
    result = criu.check_all(info.path)
    if result.errors:
        return CheckItem("criu check --all", False, "; ".join(result.errors), f"this kernel fails CRIU: {INSTALL}")
    if result.warnings:
        return CheckItem("criu check --all", False, "kernel warning: " + "; ".join(result.warnings),
                         "optional features some programs need (e.g. dirty tracking for incremental dumps)",
                         required=False)
    return CheckItem("criu check --all", True, "every kernel feature CRIU can use is present")


def _probe_item(info: criu.CriuInfo) -> CheckItem:
    if os.geteuid() != 0:
        return CheckItem("criu sockets", False, "not tried: needs root", "run cedana check as root", required=False)
    why = criu.tcp_probe(info.path)
    if not why:
        return CheckItem("criu sockets", True, "dumped and restored a process holding TCP sockets")
    return CheckItem("criu sockets", False, f"CRIU {info.version} cannot dump and restore TCP sockets: {why}", INSTALL)


def _criu_items(settings: Settings, full: bool) -> list[CheckItem]:
    try:
        info = criu.probe_criu(settings.criu.binary_path)
    except NotReady as exc:
        return [CheckItem("criu", False, str(exc), INSTALL)]
    items = [_version_item(info), _kernel_item(info, False)]
    if full:
        items.append(_kernel_item(info, True))
    if info.check_ok and info.version_ok:
        items.append(_probe_item(info))
    uffd = subprocess.run([info.path, "check", "--feature", "uffd-noncoop"], capture_output=True, text=True)
    items.append(CheckItem(
        "userfaultfd", uffd.returncode == 0,
        "available (lazy restore works)" if uffd.returncode == 0 else (uffd.stdout + uffd.stderr).strip(),
        "" if uffd.returncode == 0 else "lazy restore needs a kernel with CONFIG_USERFAULTFD",
        required=False,
    ))
    return items


def _fuse_item() -> CheckItem:
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse")
    if not shutil.which("fusermount3"):
        missing.append("fusermount3")
    if importlib.util.find_spec("pyfuse3") is None:
        missing.append("pyfuse3")
    if missing:
        return CheckItem("fuse", False, "missing: " + ", ".join(missing),
                         "install fuse3 and libfuse3-dev, then `make setup`", required=False)
    return CheckItem("fuse", True, "/dev/fuse, fusermount3 and pyfuse3 present")


def run_checks(settings: Settings, full: bool = False) -> list[CheckItem]:
    items = [CheckItem("root", os.geteuid() == 0,
                       "running as root" if os.geteuid() == 0 else f"running as uid {os.geteuid()}",
                       "run cedana as root")]
    items += _criu_items(settings, full)
    items.append(_fuse_item())
    return items


def ready(items: list[CheckItem]) -> bool:
    return all(i.ok for i in items if i.required)
