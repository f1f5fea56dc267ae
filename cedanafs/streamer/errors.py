"""Typed errors of the store, and the one table that maps client-library exceptions to them.

Backends raise only these; callers above the streamer never see a botocore, fsspec, gcsfs or
aiohttp exception. Every error is a cedanafs.errors.StoreError, so the CLI prints it as a sentence.
Classification goes by type: the S3 error code, the HTTP status, the client library's exception
class (imported only when an error needs classifying, so a local store never loads the remote
clients), the errno. Message text is read only where a client gives nothing else: gcsfs raises a
plain OSError("Forbidden: ...") for 403, and fsspec a FileNotFoundError for a missing bucket.
"""

from __future__ import annotations

import errno
import functools
import http.client
import importlib

from cedanafs.errors import BackendError, CheckpointError, NoSuchObject, ObjectExists, StoreError

__all__ = ["AuthError", "BackendError", "CorruptChunk", "MissingChunk", "NoSuchBucket", "NoSuchObject",
           "ObjectExists", "TemporaryFailure", "classify", "classify_status", "translate"]


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
    "PreconditionFailed": ObjectExists,  # a conditional create (If-None-Match: *) lost
    "412": ObjectExists,
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

# Client exception classes that mean "could not talk to the endpoint", by module (subclasses
# count: aiohttp's ClientConnectorError, ServerDisconnectedError, ClientOSError, ServerTimeoutError
# are ClientConnectionErrors; requests' ProxyError is a ConnectionError, its ReadTimeout a Timeout).
_TEMPORARY_TYPES = {
    "botocore.exceptions": ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                            "ConnectionClosedError", "HTTPClientError"),
    "botocore.parsers": ("ResponseParserError",),
    "aiohttp": ("ClientConnectionError", "ClientPayloadError"),
    "fsspec.exceptions": ("FSTimeoutError",),
    "requests.exceptions": ("ConnectionError", "ChunkedEncodingError", "Timeout"),
    "urllib3.exceptions": ("ProtocolError", "TimeoutError", "IncompleteRead"),
}
# Client exceptions that carry the HTTP status (`code` or `status`).
_STATUS_TYPES = {"gcsfs.retry": ("HttpError",), "aiohttp": ("ClientResponseError",)}


@functools.cache
def _types(table: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[type, ...]:
    found: list[type] = []
    for module, names in table:
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            continue  # that client is not installed: none of its errors can happen
        found += [cls for cls in (getattr(loaded, n, None) for n in names) if isinstance(cls, type)]
    return tuple(found)


def _temporary_types() -> tuple[type, ...]:
    builtin = (ConnectionError, TimeoutError, http.client.IncompleteRead)  # socket.timeout is TimeoutError
    return builtin + _types(tuple(_TEMPORARY_TYPES.items()))


def _status_types() -> tuple[type, ...]:
    return _types(tuple(_STATUS_TYPES.items()))


def classify_status(status: int) -> type[BackendError]:
    """HTTP status -> error class (the GCS JSON API and S3 agree on these)."""
    if status == 404:
        return NoSuchObject
    if status == 412:
        return ObjectExists  # a conditional create (ifGenerationMatch=0) lost
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
    if isinstance(exc, FileExistsError):
        return ObjectExists  # s3fs and gcsfs raise it for a lost conditional create
    code = _s3_code(exc)
    if code is not None:
        return _S3_CODES.get(code) or classify_status(_int_or(code, 0))
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(exc, _status_types()) and isinstance(status, int):
        return classify_status(status)
    if isinstance(exc, _temporary_types()):
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
    """Last resort, for errors fsspec and gcsfs raise as plain builtins (see the module docstring)."""
    text = str(exc)
    if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
        return NoSuchBucket
    if isinstance(exc, FileNotFoundError):
        return NoSuchObject
    if isinstance(exc, PermissionError) or (type(exc) is OSError and text.startswith("Forbidden")):
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
        ObjectExists: f"{where}: already exists",
        AuthError: f"{where}: access denied (check the credentials): {detail}",
        TemporaryFailure: f"{where}: temporary failure: {detail}",
    }
    return cls(messages.get(cls, f"{where}: {detail}"))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
