"""The store key on this machine: `cedana store key export|import` (streamer/backends/crypt.py).

A second machine that shares an encrypted store needs the same key file. Export writes the key
(to stdout or a new 0600 file); import checks that the file holds a cedanafs store key, that it
is the key of the configured store (when that store exists and is encrypted), and installs it
at store.key_file, 0600, never replacing another key unless asked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..config import Settings
from ..errors import AlreadyExists, NotFound, UsageError
from ..streamer import open_backend
from ..streamer.backends.crypt import InvalidKeyFile, StoreKey, read_key_file, write_key_file
from ..streamer.backends.format import key_file_path, read_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyInfo:
    """A key file and the id of the key it holds."""

    path: str
    key_id: str


def export_key(settings: Settings, dest: str | None = None) -> tuple[str, KeyInfo]:
    """The key file's text (and, with dest, a new 0600 copy of it at dest)."""
    path = key_file_path(settings)
    key = _read(path)
    if dest:
        try:
            write_key_file(dest, key)
        except FileExistsError:
            raise AlreadyExists(f"{dest} already exists; choose another file") from None
    return key.to_text(), KeyInfo(path, key.id)


def import_key(settings: Settings, source: str, store_url: str | None = None, force: bool = False) -> KeyInfo:
    """Install the key in `source` as store.key_file; refuse a key that is not the store's."""
    key = _read(source)
    url = store_url or settings.store.url
    backend = open_backend(url, settings)
    try:
        fmt = read_format(backend)
    finally:
        backend.close()
    if fmt is not None and fmt.encrypted and fmt.key_id != key.id:
        raise UsageError(f"{source} holds key {key.id}, but {url} is encrypted with key {fmt.key_id}")
    path = key_file_path(settings)
    if os.path.exists(path):
        current = _read(path)
        if current.id == key.id:
            return KeyInfo(path, key.id)
        if not force:
            raise AlreadyExists(f"{path} holds another key (id {current.id}); --force replaces it"
                                " (keep a copy: data encrypted with it cannot be read without it)")
        os.replace(path, f"{path}.{current.id}.old")
        log.warning("moved the previous key %s to %s.%s.old", current.id, path, current.id)
    write_key_file(path, key)
    return KeyInfo(path, key.id)


def _read(path: str) -> StoreKey:
    try:
        return read_key_file(path)
    except FileNotFoundError:
        raise NotFound(f"no store key at {path} (config store.key_file)") from None
    except (InvalidKeyFile, OSError) as exc:
        raise UsageError(f"{path}: {exc}") from None
