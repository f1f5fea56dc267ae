"""A managed job as the daemon records it, and the names it gets.

Shared by app.jobs (the job service) and app.container_jobs (container jobs), which must not
import each other's modules both ways.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

import psutil

_ADJECTIVES = ("amber", "brave", "calm", "dapper", "eager", "fuzzy", "gentle", "happy", "jolly", "keen",
               "lucky", "mellow", "nimble", "proud", "quiet", "rapid", "sunny", "tidy", "vivid", "witty")
_NOUNS = ("badger", "comet", "dolphin", "falcon", "gecko", "heron", "ibis", "koala", "lynx", "marmot",
          "otter", "panda", "quokka", "raven", "salmon", "tapir", "urchin", "walrus", "yak", "zebra")


@dataclass
class Job:
    """One managed job as stored; `pid` 0 means no process (never started, or restored from nothing)."""

    jid: str
    type: str = "process"
    pid: int = 0
    start_time: float = 0.0
    uid: int = 0
    gid: int = 0
    cmd: list[str] = field(default_factory=list)
    cwd: str = ""
    log: str = ""
    host: str = ""
    created: float = 0.0
    exit_code: int | None = None
    gpu: bool = False
    pending: str = ""
    restored_from: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def process_start_time(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


def new_jid() -> str:
    """A readable random job id, e.g. `brave-otter-3f2a`."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.token_hex(2)}"
