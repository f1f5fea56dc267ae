"""Everything that talks to CRIU: finding and checking the binary, dump and restore over `criu swrk`,
the criu command line where swrk cannot serve (lazy pages: lazy.py; a restore that keeps the
caller's terminal: terminal.py), and the CRIU processes these leave running with their watchdogs.

This package knows only an images directory and a process id; where the images live
(plain dir, archive, the mount) is the business of the layers above.
"""

from .binary import RECOMMENDED, CriuInfo, KernelCheck, check_all, find_criu, probe_criu
from .images import TreeEntry, image_pids, read_pstree
from .probe import tcp_probe
from .rpc import CriuFailed, DumpOptions, RestoreOptions, StdioMapping, dump, log_errors, restore

__all__ = [
    "RECOMMENDED", "CriuFailed", "CriuInfo", "DumpOptions", "KernelCheck", "RestoreOptions", "StdioMapping",
    "TreeEntry", "check_all", "dump", "find_criu", "image_pids", "log_errors", "probe_criu", "read_pstree",
    "restore", "tcp_probe",
]
