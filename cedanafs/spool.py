"""The markers of a spool directory, shared by its writer (app/capture.py) and the ingest that
follows it (streamer/ingest.py): `.complete` (every file is final), `.abandoned` (the writer
failed), `.writer` (the writer's pid: if that process dies outright, the ingest stops too); and
CRIU's pages images in it, which a reader that follows CRIU (the ingest, with spool.follow)
takes in the order CRIU writes them.

Layer 0, with no imports beyond the standard library, so a dump command loads it cheaply.
"""

from __future__ import annotations

import os
import re
import time

COMPLETE = ".complete"
ABANDONED = ".abandoned"
WRITER = ".writer"
PAGES = re.compile(r"pages-(\d+)\.img$")

_checked: dict[str, float] = {}


def writer_alive(source: str, every: float = 0.5) -> bool:
    """Whether the process named in `source`/.writer still runs (checked at most every `every` s).

    A writer killed outright (SIGKILL) drops no marker: without this, an ingest following its
    spool would wait for ever, and with it the killed writer's own request into the mount."""
    now = time.monotonic()
    if now - _checked.get(source, 0.0) < every:
        return True
    _checked[source] = now
    try:
        with open(os.path.join(source, WRITER)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return True  # no writer named: markers and the directory decide
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def pages_images(directory: str) -> list[str]:
    """The names of the `pages-<n>.img` files in `directory`, in the order CRIU writes them."""
    found = [(int(m.group(1)), name) for name in os.listdir(directory) if (m := PAGES.match(name))]
    return [name for _, name in sorted(found)]
