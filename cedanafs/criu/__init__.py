"""Everything that talks to CRIU: finding and checking the binary, dump and restore over `criu swrk`.

This package knows only an images directory and a process id; where the images live
(plain dir, archive, the mount) is the business of the layers above.
"""

from .binary import CriuInfo, find_criu, probe_criu
from .images import TreeEntry, image_pids, read_pstree
from .rpc import DumpOptions, RestoreOptions, StdioMapping, dump, restore

__all__ = [
    "CriuInfo", "DumpOptions", "RestoreOptions", "StdioMapping", "dump", "find_criu", "image_pids",
    "probe_criu", "read_pstree", "restore", "TreeEntry",
]
