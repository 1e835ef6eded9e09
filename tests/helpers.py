"""Helpers the tests share: waiting for a condition with a deadline.

Speed is the benchmark's business; a test waits for what it expects with a generous
deadline and polls, so a busy CI machine slows it down instead of failing it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

DEFAULT_WAIT_SECONDS = 20.0
POLL_SECONDS = 0.05


def eventually(
    condition: Callable[[], bool], timeout: float = DEFAULT_WAIT_SECONDS, what: str = "condition"
) -> None:
    """Return once ``condition()`` is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_SECONDS)


async def eventually_async(
    condition: Callable[[], Awaitable[bool]],
    seconds: float = DEFAULT_WAIT_SECONDS,
    what: str = "condition",
) -> None:
    """``eventually`` for a coroutine condition, without blocking the event loop."""
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)
