"""When a transiently failed event is tried again, and when it is given up (SPEC §4).

Retries are bounded by time, not by count: an event is retried with capped exponential
backoff until ``RECEIVER_RETRY_FOR`` (24 h) has passed since its *first failure*, because
senders retry for days and a maintenance window of the sink must not dead-letter the
traffic (PITFALLS: a budget counted in attempts, 8 x 1 s doubling, lasts ~2 minutes). The
clock starts at the first failure, not at receipt, so an event that waited in the queue
(workers down, or an open circuit) still gets its whole budget; a replay starts it afresh.

``RECEIVER_MAX_ATTEMPTS`` stays as an operator's explicit count cap: unset (the default)
there is none; set, an event is also given up after that many failed attempts, whichever
comes first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.settings import Settings

# 2**60 seconds is past any cap; a larger exponent would overflow the float.
MAX_EXPONENT = 60


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**(attempt-1)``,
    the ceiling capped at ``cap``."""
    ceiling = min(cap, base * 2 ** min(max(attempt - 1, 0), MAX_EXPONENT))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The backoff and the budget of one worker, from its settings."""

    base_seconds: float
    max_seconds: float
    budget_seconds: float
    max_attempts: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base_seconds=settings.retry_base_seconds,
            max_seconds=settings.retry_max_seconds,
            budget_seconds=settings.retry_for_seconds,
            max_attempts=settings.max_attempts,
        )

    def next_delay(self, attempt: int, first_failed_ms: int, now_ms: int) -> float | None:
        """Seconds until attempt ``attempt + 1`` after attempt ``attempt`` failed, or None
        when the event has used up its budget (time since ``first_failed_ms``, or count).

        The last delay is cut to what is left of the budget, so the final attempt comes
        when the budget ends rather than up to one backoff earlier.
        """
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        remaining = (first_failed_ms + self.budget_seconds * 1000 - now_ms) / 1000
        if remaining <= 0:
            return None
        return min(backoff_delay(attempt, self.base_seconds, self.max_seconds), remaining)

    def describe_give_up(self, attempt: int, first_failed_ms: int, now_ms: int) -> str:
        """Why the retries ended, for ``last_error``: the count and the time they took."""
        spent = max(0.0, (now_ms - first_failed_ms) / 1000)
        return f"gave up after {attempt} attempts in {spent:.1f}s"
