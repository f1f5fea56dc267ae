"""`cedana features`: what this install can do, each with a yes/no and the evidence.

CRIU and its version, lazy pages (userfaultfd), the FUSE mount, S3 and GCS stores (their client
libraries), runc and containerd (their binaries), GPU (an NVIDIA device and CRIU's CUDA plugin).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

from .. import criu
from ..config import Settings
from ..errors import NotReady

CUDA_PLUGIN_GLOBS = ("/usr/local/lib/criu/cuda_plugin.so", "/usr/lib/criu/cuda_plugin.so",
                     "/usr/local/lib/*/criu/cuda_plugin.so", "/usr/lib/*/criu/cuda_plugin.so")


@dataclass(frozen=True)
class Feature:
    name: str
    available: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def features(settings: Settings) -> list[Feature]:
    out = _criu_features(settings)
    out.append(_module_feature("fuse mount", "pyfuse3", "/dev/fuse" if os.path.exists("/dev/fuse") else ""))
    out.append(_module_feature("s3 store", "s3fs"))
    out.append(_module_feature("gcs store", "gcsfs"))
    out.append(_binary_feature("runc", "runc"))
    out.append(_binary_feature("containerd", "containerd"))
    out.append(_gpu_feature())
    return out


def _criu_features(settings: Settings) -> list[Feature]:
    try:
        info = criu.probe_criu(settings.criu.binary_path)
    except NotReady as exc:
        return [Feature("criu", False, str(exc)), Feature("lazy pages", False, "needs CRIU")]
    uffd = subprocess.run([info.path, "check", "--feature", "uffd-noncoop"], capture_output=True, text=True)
    lazy = uffd.returncode == 0
    return [Feature("criu", info.check_ok, f"{info.version} ({info.path})"),
            Feature("lazy pages", lazy, "userfaultfd available" if lazy else (uffd.stdout + uffd.stderr).strip())]


def _module_feature(name: str, module: str, extra: str = "-") -> Feature:
    found = importlib.util.find_spec(module) is not None
    ok = found and bool(extra)
    return Feature(name, ok, f"{module} {'installed' if found else 'missing'}"
                   + ("" if extra in ("-", "") else f", {extra}") + ("" if extra else ", no /dev/fuse"))


def _binary_feature(name: str, binary: str) -> Feature:
    path = shutil.which(binary)
    return Feature(name, path is not None, path or f"{binary} not found in PATH")


def _gpu_feature() -> Feature:
    devices = glob.glob("/dev/nvidia[0-9]*")
    plugin = next((p for g in CUDA_PLUGIN_GLOBS for p in glob.glob(g)), "")
    if not devices:
        return Feature("gpu", False, "no NVIDIA device")
    if not plugin:
        return Feature("gpu", False, f"{len(devices)} NVIDIA device(s), but no CRIU CUDA plugin")
    return Feature("gpu", True, f"{len(devices)} NVIDIA device(s), plugin {plugin}")
