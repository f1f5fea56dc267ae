"""The control socket's wire format: one JSON object per line, a request and then its response.

Request:  {"method": "job.list", "params": {...}}            (file descriptors may ride along, SCM_RIGHTS)
Response: {"ok": true, "result": ...}
      or  {"ok": false, "error": {"type": "NotFound", "message": "...", "exit_code": 3}}
"""

from __future__ import annotations

import json
from typing import Any

from .. import errors
from ..errors import CedanaError, ProtocolError

__all__ = ["ProtocolError", "decode", "encode", "error", "ok", "raise_error"]

VERSION = 1
MAX_MESSAGE = 1 << 20
MAX_FDS = 3


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def decode(line: bytes) -> dict:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"malformed message: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed message: not a JSON object")
    return obj


def request(method: str, params: dict | None = None) -> bytes:
    return encode({"method": method, "params": params or {}, "version": VERSION})


def ok(result: Any) -> bytes:
    return encode({"ok": True, "result": result})


def error(err: CedanaError) -> bytes:
    payload = {"type": type(err).__name__, "message": str(err), "exit_code": err.exit_code}
    return encode({"ok": False, "error": payload})


def raise_error(payload: dict) -> None:
    """Raise the CedanaError a response describes, keeping its message and exit code."""
    cls = getattr(errors, str(payload.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, CedanaError)):
        cls = CedanaError
    err = cls(str(payload.get("message") or "the daemon reported an error"))
    err.exit_code = int(payload.get("exit_code") or 1)
    raise err
