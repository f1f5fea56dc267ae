"""The store's format object and the store opener: how a store is encrypted, and with which key.

This module owns `cedana-store.json`, one small plain object at the store root written on first
use (format version, cipher, name scheme, chunk id scheme, codec of new chunks, key id: never a
key), and `open_formatted()`, which reads it on every open and hands back the backend to use:
the plain one, or an EncryptedBackend with the key from `store.key_file`. A store made by a
newer version, or with settings that do not match the config (`store.encrypt`), or whose key
is not at hand, is refused with one line; it is never misread and never written in a second
format. Chunks carry their codec in their own header, so the recorded codec is informative and
a changed `store.codec` applies to new chunks only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from cedanafs.config import Settings
from cedanafs.errors import ConfigError

from ..chunkstore import ID_SCHEME, KEYED_ID_SCHEME
from ..hashing import SCHEME_KEYED, SCHEME_PLAIN, chunk_prefix
from ..packs import is_index, pack_prefix
from ..errors import CorruptObject, NoSuchObject, StoreFormatError, StoreKeyError
from .base import Backend
from .crypt import (CIPHER, MAGIC, NAMES, EncryptedBackend, InvalidKeyFile, StoreKey, read_key_file,
                    write_key_file)
from .local import LocalBackend

log = logging.getLogger(__name__)

FORMAT_KEY = "cedana-store.json"
FORMAT_NAME = "cedanafs-store"
FORMAT_VERSION = 1
ENCRYPT_MODES = ("auto", "on", "off")
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs")
_DATA_PREFIXES = (chunk_prefix(SCHEME_PLAIN), chunk_prefix(SCHEME_KEYED), pack_prefix(SCHEME_PLAIN),
                  pack_prefix(SCHEME_KEYED), "manifests/")


@dataclass(frozen=True)
class StoreFormat:
    """What the format object says (and, for a new store, will say)."""

    encryption: str = "none"  # CIPHER or "none"
    names: str = "plain"  # NAMES or "plain"
    chunk_id: str = ID_SCHEME
    codec: str = "zstd"
    key_id: str = ""
    version: int = FORMAT_VERSION
    format: str = FORMAT_NAME

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()


def key_file_path(settings: Settings) -> str:
    """config store.key_file, else `store.key` beside the catalog database (the state dir)."""
    if settings.store.key_file:
        return settings.store.key_file
    return os.path.join(os.path.dirname(os.path.abspath(settings.db.path)), "store.key")


def wants_encryption(url: str, settings: Settings) -> bool | None:
    """True/False from config store.encrypt; None (auto on a local store): follow the store."""
    mode = settings.store.encrypt.lower()
    if mode not in ENCRYPT_MODES:
        raise ConfigError(f"config key 'store.encrypt' must be one of {', '.join(ENCRYPT_MODES)},"
                          f" not {settings.store.encrypt!r}")
    if mode != "auto":
        return mode == "on"
    return True if urlsplit(url).scheme.lower() in REMOTE_SCHEMES else None


def open_formatted(backend: Backend, settings: Settings) -> Backend:
    """The backend to use for the store at `backend`: checked against its format, keyed if encrypted."""
    want = wants_encryption(backend.url, settings)
    found = read_format(backend)
    if found is None:
        found = _create(backend, settings, bool(want))
    _check(backend.url, found, want)
    if isinstance(backend, LocalBackend):
        os.chmod(backend.root, 0o700)  # chunks are process memory: the store dir is root's alone
    if not found.encrypted:
        return backend
    return EncryptedBackend(backend, load_key(backend.url, found, settings))


def read_format(backend: Backend) -> StoreFormat | None:
    try:
        raw = backend.get(FORMAT_KEY)
    except NoSuchObject:
        return None
    try:
        body = json.loads(raw)
        if body.get("format") != FORMAT_NAME:
            raise ValueError("not a cedanafs store format object")
        version = int(body.get("version", 0))
    except (ValueError, AttributeError, TypeError) as exc:
        raise StoreFormatError(f"{backend.url}: {FORMAT_KEY} is unreadable ({exc});"
                               " is this a cedanafs store?") from None
    if version != FORMAT_VERSION:
        raise StoreFormatError(f"{backend.url} was made by another cedanafs version (store format {version});"
                               f" this one reads format {FORMAT_VERSION}")
    known = {k: body[k] for k in StoreFormat.__dataclass_fields__ if k in body}
    return StoreFormat(**known)


def _check(url: str, fmt: StoreFormat, want: bool | None) -> None:
    if fmt.encryption not in ("none", CIPHER) or fmt.names not in ("plain", NAMES) \
            or fmt.chunk_id not in (ID_SCHEME, KEYED_ID_SCHEME):
        raise StoreFormatError(f"{url} uses a format this version does not know ({fmt.encryption},"
                               f" {fmt.names} names, {fmt.chunk_id} chunk ids)")
    if fmt.encrypted and (fmt.names != NAMES or fmt.chunk_id != KEYED_ID_SCHEME):
        raise StoreFormatError(f"{url}: inconsistent store format ({fmt.encryption} with {fmt.names} names"
                               f" and {fmt.chunk_id} chunk ids)")
    if want is False and fmt.encrypted:
        raise StoreFormatError(f"{url} is an encrypted store (key id {fmt.key_id}) but config store.encrypt"
                               " is off; set it to auto or on")
    if want is True and not fmt.encrypted:
        raise StoreFormatError(f"{url} is not an encrypted store (it was made with store.encrypt off);"
                               " set store.encrypt off to use it, or use a new store")


def _create(backend: Backend, settings: Settings, encrypt: bool) -> StoreFormat:
    """Write the format object of a new store, of a plain one from before formats were recorded,
    or again for an encrypted store that lost it (when the configured key opens its data)."""
    sample = _first_object(backend)
    if sample is not None and backend.get(sample).startswith(MAGIC):
        key = _key_of_encrypted_data(backend, settings, sample)
        encrypt = True
    elif sample is not None and encrypt:
        raise StoreFormatError(f"{backend.url} holds unencrypted data written before store formats were"
                               " recorded; set store.encrypt off to use it, or use a new store")
    elif encrypt:
        key = _key_for_new_store(settings)
    fmt = StoreFormat(codec=settings.store.codec)
    if encrypt:
        fmt = StoreFormat(encryption=CIPHER, names=NAMES, chunk_id=KEYED_ID_SCHEME, codec=settings.store.codec,
                          key_id=key.id)
    backend.put(FORMAT_KEY, fmt.to_bytes())
    # Two first users at once: the last write wins and the other one sees it here.
    written = read_format(backend) or fmt
    log.info("new %s store at %s%s", "encrypted" if written.encrypted else "plain", backend.url,
             f" (key id {written.key_id})" if written.encrypted else "")
    return written


def _first_object(backend: Backend) -> str | None:
    """A data object sealed whole (in an encrypted store): a chunk, a pack's index or a manifest,
    never a pack, whose chunks are sealed one by one."""
    for prefix in _DATA_PREFIXES:
        for key in backend.list(prefix):
            if not prefix.startswith("packs-") or is_index(key):
                return key
    return None


def _key_of_encrypted_data(backend: Backend, settings: Settings, sample: str) -> StoreKey:
    """The configured key, if it opens `sample` (an object of a store whose format object is gone)."""
    lost = StoreFormat(encryption=CIPHER, key_id="unknown (its cedana-store.json is missing)")
    key = load_key(backend.url, lost, settings, check_id=False)
    sealed = EncryptedBackend(backend, key)
    plain = sealed._dec_name(sample)
    try:
        if plain is None:
            raise CorruptObject(sample)
        sealed.open(plain, backend.get(sample))
    except CorruptObject:
        raise StoreFormatError(f"{backend.url}: its cedana-store.json is missing and its data is encrypted"
                               f" with another key than {key_file_path(settings)}'s") from None
    log.warning("%s: cedana-store.json was missing; written again for key %s, which opens the data",
                backend.url, key.id)
    return key


def _key_for_new_store(settings: Settings) -> StoreKey:
    """The key in store.key_file, made (0600) if there is none yet, like `restic init`."""
    path = key_file_path(settings)
    try:
        return read_key_file(path)
    except FileNotFoundError:
        pass
    except (InvalidKeyFile, OSError) as exc:
        raise StoreKeyError(f"cannot use store.key_file {path}: {exc}") from None
    key = StoreKey.generate()
    try:
        write_key_file(path, key)
    except FileExistsError:
        return read_key_file(path)
    except OSError as exc:
        raise StoreKeyError(f"cannot create store.key_file {path}: {exc.strerror}") from None
    log.info("created the store key %s (id %s): keep a copy; without it the store cannot be read",
                path, key.id)
    return key


def load_key(url: str, fmt: StoreFormat, settings: Settings, check_id: bool = True) -> StoreKey:
    """The key of an encrypted store, or one line saying which key it needs."""
    path = key_file_path(settings)
    need = f"{url}: this store is encrypted; its key id is {fmt.key_id}; give store.key_file"
    try:
        key = read_key_file(path)
    except FileNotFoundError:
        raise StoreKeyError(f"{need} (there is no key at {path})") from None
    except PermissionError:
        raise StoreKeyError(f"{need} ({path} is not readable by this user)") from None
    except (InvalidKeyFile, OSError) as exc:
        raise StoreKeyError(f"{need} ({path}: {exc})") from None
    if check_id and key.id != fmt.key_id:
        raise StoreKeyError(f"{need} ({path} holds key {key.id})")
    return key


__all__ = ["ENCRYPT_MODES", "FORMAT_KEY", "StoreFormat", "key_file_path", "load_key", "open_formatted",
           "read_format", "wants_encryption"]
