"""Retry of temporary backend failures with jittered exponential backoff, bounded in attempts and time.

Client libraries' own retries are turned down (see backends/remote.py) so that this one policy
decides how long an unreachable endpoint is tried: by default at most 5 attempts, giving up
before a pause would pass 20 s since the first (RetryPolicy.deadline).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import TemporaryFailure

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a TemporaryFailure."""

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 3.0
    deadline: float = 20.0  # seconds, across all attempts of one call

    def delay(self, attempt: int) -> float:
        """Full-jitter backoff before attempt number `attempt` (1-based retry count)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** attempt)))


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str, endpoint: str = "") -> T:
    """Run fn(); on TemporaryFailure sleep and retry; then raise one clear TemporaryFailure."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except TemporaryFailure as exc:
            elapsed = time.monotonic() - started
            pause = policy.delay(attempt)
            if attempt >= policy.attempts or elapsed + pause > policy.deadline:
                raise _gave_up(exc, what, endpoint, attempt, elapsed) from exc
            log.info("%s: temporary failure (attempt %d/%d), retrying in %.2fs: %s",
                     what, attempt, policy.attempts, pause, exc)
            time.sleep(pause)


def _gave_up(exc: TemporaryFailure, what: str, endpoint: str, attempts: int, elapsed: float) -> TemporaryFailure:
    where = f"endpoint {endpoint} " if endpoint else ""
    noun = "attempt" if attempts == 1 else "attempts"
    return TemporaryFailure(
        f"{what}: {where}unreachable after {attempts} {noun} in {elapsed:.1f}s ({_cause(exc)})"
    )


def _cause(exc: Exception) -> str:
    text = str(exc)
    return text.split(": temporary failure: ", 1)[-1]
