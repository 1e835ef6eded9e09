"""When a watched task is checked again.

- The first check is due ``RECEIVER_RECONCILE_AFTER`` after the last event of the task (or
  after ``track``): the worker and ``track`` set it.
- A check that finds no progress doubles the wait: ``after * 2^checks``, capped at
  ``CHECK_INTERVAL_CAP_SECONDS`` (1 hour), where ``checks`` counts polls since the last
  progress. With the 10 min default a stuck task is checked at 10, 30, 70, 130 min, then
  hourly, about 50 times until it is given up at 48 h. Any new event resets the count.
- A transient failure (5xx, a timeout, an unreadable answer) retries sooner:
  1 s * 2^(errors-1), jittered, never later than the regular interval.
- No check is scheduled past the give-up deadline (first watched + max age): the last one
  happens at the deadline, and a task still not finished then is given up.
"""

from __future__ import annotations

import random

CHECK_INTERVAL_CAP_SECONDS = 3600.0
RETRY_BASE_SECONDS = 1.0


def check_interval(checks: int, after_seconds: float) -> float:
    """Seconds until the next check after ``checks`` polls without progress."""
    cap = max(after_seconds, CHECK_INTERVAL_CAP_SECONDS)
    return float(min(cap, after_seconds * 2 ** min(checks, 32)))


def retry_interval(errors: int, after_seconds: float) -> float:
    """Seconds until a retry after ``errors`` transient failures in a row (jittered)."""
    ceiling = min(after_seconds, RETRY_BASE_SECONDS * 2 ** min(max(errors, 1) - 1, 32))
    return random.uniform(ceiling / 2, ceiling)


def next_due_ms(now_ms: int, delay_seconds: float, since_ms: int, max_age_seconds: float) -> int:
    """``now + delay``, but never past the give-up deadline."""
    deadline = since_ms + int(max_age_seconds * 1000)
    return max(now_ms, min(now_ms + int(delay_seconds * 1000), deadline))


def expired(now_ms: int, since_ms: int, max_age_seconds: float) -> bool:
    return now_ms - since_ms >= max_age_seconds * 1000
