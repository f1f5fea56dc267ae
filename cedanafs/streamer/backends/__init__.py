"""Backends chosen by URL: a path or file://, memory://name, s3://bucket/prefix, gs://bucket/prefix.

open_backend() is the only constructor callers need; it reads credentials and endpoints from
Settings (aws.*, gcs.*) with the standard environment variables as fallback.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Mapping
from urllib.parse import urlsplit

from cedanafs.config import Settings
from cedanafs.errors import UsageError

from ..retry import RetryPolicy
from .base import AtomicWriter, Backend, ObjectInfo
from .local import LocalBackend
from .memory import MemoryBackend
from .remote import RemoteBackend

log = logging.getLogger(__name__)

__all__ = ["AtomicWriter", "Backend", "ObjectInfo", "open_backend", "open_store_backend", "LocalBackend",
           "MemoryBackend", "RemoteBackend", "RetryPolicy"]

# Connect fast, fail fast: retry.py decides how long an endpoint is tried in total.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 60


def open_backend(url: str, settings: Settings | None = None, *, retry: RetryPolicy | None = None,
                 environ: Mapping[str, str] | None = None) -> Backend:
    """The backend for `url`; remote clients are created lazily on first use."""
    settings = settings or Settings()
    environ = os.environ if environ is None else environ
    retry = retry or RetryPolicy()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        path = parts.path if scheme == "file" else url
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: file:// URLs must name a local path (file:///dir)")
        return LocalBackend(path)
    if scheme == "memory":
        return MemoryBackend((parts.netloc + parts.path).strip("/") or "default")
    if scheme in ("s3", "s3a"):
        return _s3_backend(url, parts.netloc, parts.path, settings, environ, retry)
    if scheme in ("gs", "gcs"):
        return _gcs_backend(url, parts.netloc, parts.path, settings, environ, retry)
    raise UsageError(f"{url}: unsupported store URL (use a path, file://, memory://, s3:// or gs://)")


def open_store_backend(url: str, settings: Settings | None = None, *, retry: RetryPolicy | None = None,
                       environ: Mapping[str, str] | None = None) -> Backend:
    """The backend of the checkpoint store at `url`: its format checked (written if new), and
    wrapped in an EncryptedBackend with the store key when the store is encrypted (format.py)."""
    from .format import open_formatted

    settings = settings or Settings()
    backend = open_backend(url, settings, retry=retry, environ=environ)
    try:
        return open_formatted(backend, settings)
    except BaseException:
        backend.close()
        raise


def _need_bucket(url: str, bucket: str) -> None:
    if not bucket:
        raise UsageError(f"{url}: the URL names no bucket")


# -- S3 ------------------------------------------------------------------------------------
def s3_options(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for s3fs.S3FileSystem from config aws.* and the AWS_* variables."""
    aws = settings.aws
    endpoint = aws.endpoint or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or ""
    region = aws.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or ""
    if endpoint and not region:
        region = "us-east-1"  # S3-compatible servers accept any region; botocore needs one
    opts: dict[str, Any] = {
        "key": aws.access_key_id or environ.get("AWS_ACCESS_KEY_ID") or None,
        "secret": aws.secret_access_key or environ.get("AWS_SECRET_ACCESS_KEY") or None,
        "token": aws.session_token or environ.get("AWS_SESSION_TOKEN") or None,
        "endpoint_url": endpoint or None,
        "client_kwargs": {"region_name": region} if region else {},
        "config_kwargs": {
            "connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
            "retries": {"max_attempts": 1, "mode": "standard"},
            # No CRC32 of every body on the client's one event-loop thread: every chunk is checked
            # against its BLAKE3 id on read (and sealed with AES-GCM in an encrypted store).
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"payload_signing_enabled": False},
        },
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    return opts


def _s3_backend(url: str, bucket: str, prefix: str, settings: Settings, environ: Mapping[str, str],
                retry: RetryPolicy) -> RemoteBackend:
    _need_bucket(url, bucket)
    opts = s3_options(settings, environ)

    def make_fs() -> Any:
        import s3fs  # imported late: it is heavy and only remote stores need it

        fs = s3fs.S3FileSystem(**opts)
        fs.retries = 1  # s3fs' own loop off: retry.py is the policy
        return fs

    def probe(fs: Any, name: str) -> None:
        fs.call_s3("head_bucket", Bucket=name)

    endpoint = opts["endpoint_url"] or "(AWS default)"
    return RemoteBackend(url, bucket, prefix, make_fs, endpoint, retry, probe)


# -- GCS -----------------------------------------------------------------------------------
def gcs_options(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for gcsfs.GCSFileSystem from config gcs.* and the Google variables."""
    gcs = settings.gcs
    endpoint = gcs.endpoint or environ.get("STORAGE_EMULATOR_HOST") or ""
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint
    credentials = gcs.credentials or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or ""
    # An emulator takes no credentials; without one, gcsfs finds Google's default credentials.
    token: Any = credentials or ("anon" if endpoint else None)
    return {
        "project": gcs.project or environ.get("GOOGLE_CLOUD_PROJECT") or None,
        "token": token,
        "endpoint_url": endpoint or None,
        "requests_timeout": READ_TIMEOUT,
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }


def _gcs_backend(url: str, bucket: str, prefix: str, settings: Settings, environ: Mapping[str, str],
                 retry: RetryPolicy) -> RemoteBackend:
    _need_bucket(url, bucket)
    opts = gcs_options(settings, environ)

    def make_fs() -> Any:
        with warnings.catch_warnings():
            # We never list or create buckets, which is all a project is needed for.
            warnings.filterwarnings("ignore", message="GCS project not set")
            return _gcs_class()(**opts)

    def probe(fs: Any, name: str) -> None:
        fs.call("GET", "b/{}", name, json_out=True)

    endpoint = opts["endpoint_url"] or "(Google default)"
    return RemoteBackend(url, bucket, prefix, make_fs, endpoint, retry, probe)


_GCS_CLASS: Any = None


def _gcs_class() -> Any:
    """GCSFileSystem with its built-in retry loop (6 tries, up to ~30 s of sleeps) taken out.

    gcsfs fixes the retry count with a decorator on _request; calling the undecorated function
    leaves retry.py as the one policy. If a future gcsfs drops __wrapped__, its own loop stays.
    The plain gcsfs.core class is used, not the package's default "extended" one, which probes
    each bucket's type over gRPC (a 60 s stall against an emulator) for features we do not use.
    """
    global _GCS_CLASS
    if _GCS_CLASS is None:
        import gcsfs.core

        base = gcsfs.core.GCSFileSystem
        raw = getattr(base._request, "__wrapped__", None)
        if raw is None:
            log.warning("gcsfs without an undecorated _request: its own retries stay on")
            _GCS_CLASS = base
        else:
            class _SingleTryGCS(base):  # type: ignore[misc, valid-type]
                async def _request(self, *args: Any, **kwargs: Any) -> Any:
                    return await raw(self, *args, **kwargs)

            _GCS_CLASS = _SingleTryGCS
    return _GCS_CLASS
