"""Thread priority: a thread of ours at SCHED_IDLE runs only on a CPU nobody else wants.

The ingest that follows CRIU's writes, the compression after a commit and the hashing of a dump
archive's pages images while CRIU writes them run this way, so CRIU (which holds a process
frozen) and the user's jobs always go first.

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


def set_priority_of(native_id: int, nice: int) -> None:
    """Another thread of ours (its threading.get_native_id()) at normal scheduling with this nice
    value, now: a thread at SCHED_IDLE on a busy machine may not run for long enough to do it
    itself. Nice 10 takes what the other threads leave and a little more; 0 is normal."""
    try:
        os.sched_setscheduler(native_id, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, native_id, nice)
    except (OSError, AttributeError) as exc:
        log.debug("cannot change thread %d's scheduling: %s", native_id, exc)
