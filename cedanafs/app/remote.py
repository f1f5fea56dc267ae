"""Seed-format checkpoints in object storage: `--dir s3://bucket/prefix` and `--path gs://...`.

CRIU needs a real directory to write its images into, so a dump to a bucket keeps the images
in a private local directory while the archive is compressed and streamed straight up
(multipart): no local archive file. A restore streams the archive down and unpacks as it reads.
"""

from __future__ import annotations

import io
import os
import shutil
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Iterator
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import AlreadyExists, NoSuchObject, NotFound

if TYPE_CHECKING:  # the store's code is loaded only by the commands that go to a bucket
    from ..streamer import Backend

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs")
_COPY_BUFFER = 8 << 20


def is_remote(path: str | None) -> bool:
    return bool(path) and urlsplit(path).scheme.lower() in REMOTE_SCHEMES


def split_url(url: str) -> tuple[str, str]:
    """'s3://b/p/x.tar.gz' -> ('s3://b/p', 'x.tar.gz')."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if not name or parent.endswith(":/"):
        raise NotFound(f"{url}: name a checkpoint inside the bucket")
    return parent, name


def _exists_as_dir(backend: Backend, name: str) -> bool:
    return next(iter(backend.list(f"{name}/")), None) is not None


def ensure_absent(backend: Backend, url: str, name: str, compression: str) -> None:
    from . import archive  # the tar formats: only the commands that go to a bucket load them

    key = archive.archive_name(name, compression)
    taken = _exists_as_dir(backend, key) if compression == "none" else backend.exists(key)
    if taken:
        raise AlreadyExists(f"{url.rstrip('/')}/{key} already exists; choose another --name")


@contextmanager
def _atomic_upload(backend: Backend, key: str) -> Iterator[BinaryIO]:
    """A buffered stream into one object that appears only if the block completes."""
    raw = backend.open_write(key)
    buffered = io.BufferedWriter(raw, buffer_size=_COPY_BUFFER)
    try:
        yield buffered
        buffered.flush()
    except BaseException:
        raw.abort()
        raise
    buffered.close()


def upload_checkpoint(backend: Backend, url: str, images_dir: str, name: str, compression: str) -> str:
    """Stream a finished images dir to url/<name>[.tar.*] (backend is url's); returns its URL."""
    from . import archive

    ensure_absent(backend, url, name, compression)  # again: the name may have been taken during the dump
    key = archive.archive_name(name, compression)
    if compression == "none":
        for entry in sorted(os.listdir(images_dir)):
            with open(os.path.join(images_dir, entry), "rb") as src, _atomic_upload(backend, f"{key}/{entry}") as dst:
                shutil.copyfileobj(src, dst, _COPY_BUFFER)
    else:
        with _atomic_upload(backend, key) as dst:
            archive.write_archive(images_dir, dst, compression)
    return f"{url.rstrip('/')}/{key}"


def download_checkpoint(settings: Settings, url: str, dest: str) -> None:
    """Fetch the checkpoint at url (an archive object or a dir of images) into the empty dest."""
    parent, name = split_url(url)
    from ..streamer import open_backend
    from . import archive

    backend = open_backend(parent, settings)
    # Object stores have no directories: a name with keys under it is an images dir.
    keys = list(backend.list(f"{name}/"))
    if not keys:
        try:
            with backend.open_read(name) as src:
                archive.extract_archive(src, dest, url)
                return
        except NoSuchObject:
            raise NotFound(f"checkpoint {url} does not exist") from None
    for key in keys:
        rel = key[len(name) + 1 :]
        if "/" in rel or rel in ("", ".", ".."):
            continue
        with backend.open_read(key) as src, open(os.path.join(dest, rel), "wb") as out:
            shutil.copyfileobj(src, out, _COPY_BUFFER)
