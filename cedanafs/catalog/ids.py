"""Checkpoint ids and the names users give to jobs and checkpoints.

This module owns what a valid job name and checkpoint name is, and how new checkpoint ids are made:
`20261127T031502.123Z-3f9a`, the UTC time of creation (to the millisecond: a dump takes less
than a second, and two of one job must still sort in the order they were taken) then a random
suffix, so that two writers of one job at the same instant still get distinct ids. Ids of
earlier versions (`20261127T031502Z-3f9a`, to the second) are still recognised.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone

from ..errors import UsageError

# One path component a filesystem, an object key and a shell all accept without quoting.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@=-]{0,127}$")
_ID_TIME = "%Y%m%dT%H%M%S"
_GENERATED = re.compile(r"^(\d{8}T\d{6})(?:\.(\d{3}))?Z-[0-9a-f]{4,}$")
# `latest` is the mount's link to the newest checkpoint of a job, so no checkpoint may take its name.
RESERVED_CHECKPOINT_NAMES = frozenset({"latest"})


def new_checkpoint_id(now: datetime | None = None, suffix_bytes: int = 2) -> str:
    """A fresh id that sorts by creation time: `<UTC yyyymmddThhmmss.mmmZ>-<random hex>`."""
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now.strftime(_ID_TIME)}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(suffix_bytes)}"


def id_time(checkpoint_id: str) -> datetime | None:
    """The creation time encoded in a generated id, or None for a user-chosen name."""
    m = _GENERATED.match(checkpoint_id)
    if not m:
        return None
    when = datetime.strptime(m.group(1), _ID_TIME).replace(tzinfo=timezone.utc)
    return when.replace(microsecond=int(m.group(2) or 0) * 1000)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise UsageError(f"{what} must not be empty")
    if "/" in name or name in (".", ".."):
        raise UsageError(f"invalid {what} {name!r}: it must be one path component (no '/', '.' or '..')")
    if ".." in name or not _NAME.match(name):
        raise UsageError(
            f"invalid {what} {name!r}: use up to 128 letters, digits and . _ + @ = -,"
            " starting with a letter or digit, and no '..'"
        )
    return name


def check_job_name(name: object) -> str:
    """Return the job name if it is valid, else raise UsageError saying why."""
    return _check_name(name, "job name")


def check_checkpoint_name(name: object) -> str:
    """Return the checkpoint name (or id) if it is valid, else raise UsageError saying why."""
    checked = _check_name(name, "checkpoint name")
    if checked in RESERVED_CHECKPOINT_NAMES:
        raise UsageError(f"invalid checkpoint name {checked!r}: it is reserved")
    return checked


def is_valid_job_name(name: object) -> bool:
    try:
        check_job_name(name)
    except UsageError:
        return False
    return True


def is_valid_checkpoint_name(name: object) -> bool:
    try:
        check_checkpoint_name(name)
    except UsageError:
        return False
    return True
