"""Typed errors of the store, and the one table that maps client-library exceptions to them.

Backends raise only these; callers above the streamer never see a botocore, fsspec, gcsfs or
aiohttp exception. Every error is a cedanafs.errors.StoreError, so the CLI prints it as a sentence.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from cedanafs.errors import CheckpointError, StoreError


class BackendError(StoreError):
    """The object store failed."""


class NoSuchObject(BackendError):
    """The object does not exist."""


class NoSuchBucket(BackendError):
    """The bucket does not exist."""


class AuthError(BackendError):
    """The object store refused the credentials."""


class TemporaryFailure(BackendError):
    """The object store is temporarily unavailable."""


class CorruptObject(BackendError, CheckpointError):
    """An object of an encrypted store failed authentication: changed, truncated or moved.

    Also a CheckpointError: a manifest that fails is an unreadable checkpoint (the catalog lists
    it as broken), not a store outage."""


class StoreFormatError(StoreError):
    """The store was made by another version or with other settings; it is not read."""


class StoreKeyError(StoreError):
    """The store is encrypted and its key is not at hand."""

    exit_code = 77  # EX_NOPERM, like PermissionDenied


class CorruptChunk(StoreError):
    """A stored chunk does not match its digest."""

    def __init__(self, digest: str, detail: str = ""):
        self.digest = digest
        super().__init__(f"chunk {digest} is corrupt" + (f": {detail}" if detail else ""))


class MissingChunk(StoreError):
    """A chunk a file refers to is not in the store."""

    def __init__(self, digest: str, where: str = ""):
        self.digest = digest
        super().__init__(f"chunk {digest} is missing from the store" + (f" {where}" if where else ""))


# S3 error codes (botocore ClientError 'Code') -> our error class. Codes not listed fall through
# to the HTTP status rules in classify_status().
_S3_CODES: dict[str, type[BackendError]] = {
    "NoSuchKey": NoSuchObject,
    "404": NoSuchObject,
    "NotFound": NoSuchObject,
    "NoSuchBucket": NoSuchBucket,
    "AccessDenied": AuthError,
    "InvalidAccessKeyId": AuthError,
    "SignatureDoesNotMatch": AuthError,
    "InvalidToken": AuthError,
    "ExpiredToken": AuthError,
    "TokenRefreshRequired": AuthError,
    "AllAccessDisabled": AuthError,
    "403": AuthError,
    "SlowDown": TemporaryFailure,
    "Throttling": TemporaryFailure,
    "ThrottlingException": TemporaryFailure,
    "RequestTimeout": TemporaryFailure,
    "RequestTimeTooSkewed": AuthError,
    "InternalError": TemporaryFailure,
    "ServiceUnavailable": TemporaryFailure,
    "503": TemporaryFailure,
    "500": TemporaryFailure,
}

_TEMP_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EAGAIN, errno.EBUSY, errno.ENETDOWN,
}

# Exception class names (from aiohttp, botocore, requests, urllib3) that mean "could not talk to
# the endpoint" – matched by name so this module does not import every client library.
_TEMP_CLASS_NAMES = {
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "ClientPayloadError", "FSTimeoutError", "IncompleteRead",
    "ConnectionError", "ChunkedEncodingError", "ProxyError", "HTTPClientError", "ResponseParserError",
    "ConnectionResetError", "ConnectionRefusedError", "ConnectionAbortedError", "BrokenPipeError",
    "TimeoutError", "ReadTimeout", "ConnectTimeout", "ServerDisconnected",
}


def classify_status(status: int) -> type[BackendError]:
    """HTTP status -> error class (the GCS JSON API and S3 agree on these)."""
    if status == 404:
        return NoSuchObject
    if status in (401, 403):
        return AuthError
    if status in (408, 429) or status >= 500:
        return TemporaryFailure
    return BackendError


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _from_one(exc: BaseException) -> type[BackendError] | None:
    if isinstance(exc, BackendError):
        return type(exc)
    code = _s3_code(exc)
    if code is not None:
        return _S3_CODES.get(code) or classify_status(_int_or(code, 0))
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if type(exc).__name__ in ("HttpError", "ClientResponseError") and isinstance(status, int):
        return classify_status(status)
    if type(exc).__name__ in _TEMP_CLASS_NAMES or isinstance(exc, (socket.timeout, asyncio.TimeoutError)):
        return TemporaryFailure
    if isinstance(exc, OSError) and exc.errno in _TEMP_ERRNOS:
        return TemporaryFailure
    return None


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def _from_message(exc: BaseException) -> type[BackendError] | None:
    """Last resort for errors fsspec re-raised as plain builtins with the service's message."""
    text = str(exc)
    if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
        return NoSuchBucket
    if isinstance(exc, FileNotFoundError):
        return NoSuchObject
    if isinstance(exc, PermissionError) or text.startswith("Forbidden"):
        return AuthError
    if "Access Denied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return AuthError
    return None


def classify(exc: BaseException) -> type[BackendError]:
    """The one table: which of our errors a client-library exception means."""
    for link in _chain(exc):
        found = _from_one(link)
        if found is not None:
            # A bucket that is gone reads as NoSuchObject to fsspec; the message tells them apart.
            if found is NoSuchObject and _from_message(exc) is NoSuchBucket:
                return NoSuchBucket
            return found
    return _from_message(exc) or BackendError


def translate(exc: BaseException, where: str) -> BackendError:
    """Turn any client exception into our typed error with a message naming `where` (url/key)."""
    if isinstance(exc, BackendError):
        return exc
    cls = classify(exc)
    detail = _short(exc)
    messages = {
        NoSuchObject: f"{where}: no such object",
        NoSuchBucket: f"{where}: bucket does not exist",
        AuthError: f"{where}: access denied (check the credentials): {detail}",
        TemporaryFailure: f"{where}: temporary failure: {detail}",
    }
    return cls(messages.get(cls, f"{where}: {detail}"))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
