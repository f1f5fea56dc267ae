"""Everything that talks to CRIU: finding and checking the binary, dump and restore over `criu swrk`,
the criu command line where swrk cannot serve (lazy pages: lazy.py; a restore that keeps the
caller's terminal: terminal.py), and the CRIU processes these leave running with their watchdogs.

This package knows only an images directory and a process id; where the images live
(plain dir, archive, the mount) is the business of the layers above.

Each name below comes from its module when first asked for (PEP 562), so a command loads only the
modules it uses: a dump neither the images readers nor the probe.
"""

import sys

_FROM = {
    "RECOMMENDED": "binary", "CriuInfo": "binary", "KernelCheck": "binary", "check_all": "binary",
    "find_criu": "binary", "probe_criu": "binary",
    "TreeEntry": "images", "image_pids": "images", "read_pstree": "images",
    "tcp_probe": "probe",
    "CriuFailed": "rpc", "DumpOptions": "rpc", "RestoreOptions": "rpc", "StdioMapping": "rpc", "dump": "rpc",
    "log_errors": "rpc", "restore": "rpc",
}

__all__ = sorted(_FROM)


def __getattr__(name: str) -> object:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = f"{__name__}.{_FROM[name]}"
    __import__(module)  # not importlib's: -X importtime sees only this one
    value = getattr(sys.modules[module], name)
    globals()[name] = value  # the next use finds it here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FROM))
