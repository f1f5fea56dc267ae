"""Thread priority: a thread of ours at SCHED_IDLE runs only on a CPU nobody else wants.

The ingest that follows CRIU's writes and the compression after a commit run this way, so CRIU
(which holds a process frozen) and the user's jobs always go first.

Layer 0, with no imports beyond the standard library, so a dump command loads it cheaply.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

_thread_state = threading.local()


def set_background(on: bool) -> None:
    """This thread at SCHED_IDLE (on) or back to normal: it then runs only on a CPU nobody else
    wants (CRIU holding a process frozen, the user's jobs)."""
    if getattr(_thread_state, "background", False) == on:
        return
    try:
        policy = os.SCHED_IDLE if on else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))
        _thread_state.background = on
    except (OSError, AttributeError) as exc:
        log.debug("cannot change this thread's scheduling: %s", exc)
