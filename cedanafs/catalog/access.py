"""Who may read a checkpoint in the mount: its owner alone (and root).

A checkpoint is the memory of a process: it belongs to the uid recorded in its manifest (the
dumped process's real uid, or the writer's for imports), else to the writer the mount recorded,
else to the mount's own user; directories are 0700 and files 0600 (0700 when the writer made
them executable), the same on every machine that reads the manifest.
"""

from __future__ import annotations

import logging
import stat
from typing import Any

from .manifest import FileEntry, Manifest

log = logging.getLogger(__name__)

# Manifest.meta keys naming the checkpoint's owner; META_MOUNT is the mount's own record.
META_UID, META_GID = "uid", "gid"
META_MOUNT = "mount"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def access_of(manifest: Manifest, entry: FileEntry | None, default: tuple[int, int]) -> tuple[int, int, int]:
    """(mode, uid, gid) in the mount of a sealed checkpoint's dir (entry None) or of one of its entries."""
    uid, gid = owner_of(manifest, default)
    if entry is None or entry.type == "dir":
        return stat.S_IFDIR | PRIVATE_DIR, uid, gid
    return stat.S_IFREG | PRIVATE_FILE | (entry.mode & 0o100), uid, gid


def owner_of(manifest: Manifest, default: tuple[int, int]) -> tuple[int, int]:
    meta: dict[str, Any] = manifest.meta
    try:
        if META_UID in meta:
            return int(meta[META_UID]), int(meta.get(META_GID, meta[META_UID]))
    except (TypeError, ValueError):
        log.warning("checkpoint %s: bad owner %r; shown as root's", manifest.name, meta.get(META_UID))
        return 0, 0
    mount_meta = meta.get(META_MOUNT)
    pair = mount_meta.get("dir_owner") if isinstance(mount_meta, dict) else None
    if isinstance(pair, list) and len(pair) == 2:
        return int(pair[0]), int(pair[1])
    return default
