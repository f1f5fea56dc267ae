"""Readiness check (`cedana check`): CRIU, its kernel check, userfaultfd, FUSE, privileges."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass

from .. import criu
from ..config import Settings
from ..errors import NotReady


@dataclass(frozen=True)
class CheckItem:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _criu_items(settings: Settings, full: bool) -> list[CheckItem]:
    try:
        info = criu.probe_criu(settings.criu.binary_path, full=full)
    except NotReady as exc:
        return [CheckItem("criu", False, str(exc), "run `make setup` (builds CRIU 4.1.1) or set criu.binary_path")]
    verdict = (info.check_output.splitlines() or ["Looks good."])[-1]
    items = [
        CheckItem("criu", True, f"{info.path} (version {info.version})"),
        CheckItem("criu check", info.check_ok, verdict,
                  "" if info.check_ok else "this CRIU does not work on this kernel: run `make setup`"),
    ]
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
