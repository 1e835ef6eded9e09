"""Keep the embedded Redis of ``serve`` running: restart it when it dies, give up loudly.

A ``redis-server`` that exits (``kill -9``, "Can't recover from AOF write error" on a full
disk) would otherwise leave ``serve`` answering 503 forever while ``/healthz`` says 200,
and nobody restarts anything (PITFALLS: Recovery). The supervisor notices within a
fraction of a second, logs why (the last warning in ``redis.log``), and starts it again
with backoff. Past ``RESTART_LIMIT`` restarts in ``RESTART_WINDOW_SECONDS`` it stops
trying and ``/healthz`` fails: the cause needs more than a restart of Redis (a full disk,
a corrupt append-only file), and a restart of the process by its supervisor is the next
step. Only a server that is gone is restarted, never a slow one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable

from receiver import metrics
from receiver.embedded import EmbeddedRedis
from receiver.errors import ConfigError
from receiver.logs import get_logger
from receiver.redis_client import REDIS_ERRORS

CHECK_INTERVAL_SECONDS = 0.25
RESTART_BACKOFF_BASE_SECONDS = 0.25
RESTART_BACKOFF_CAP_SECONDS = 4.0
# Five restarts a minute (about 8 s of backoff in all) is what systemd allows by default
# (StartLimitBurst=5 in 10 s) stretched for a server that takes a moment to load its AOF.
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
log = get_logger("receiver.embedded")


class EmbeddedRedisSupervisor:
    """Watches one ``EmbeddedRedis``; ``gave_up`` turns True when it cannot bring it back."""

    def __init__(self, embedded: EmbeddedRedis, on_restart: Callable[[], Awaitable[None]]) -> None:
        self._embedded = embedded
        self._on_restart = on_restart
        self.gave_up = False
        self._restarts: collections.deque[float] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        # A start runs in a thread and cannot be cancelled: closing waits for it, so the
        # embedded server it may have started is stopped with the rest.
        self._starting: asyncio.Future[str] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="embedded-redis-supervisor"
        )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._starting is not None:
            await asyncio.wait({self._starting})

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_SECONDS)
            if self._embedded.alive():
                continue
            reason = self._embedded.exit_reason()
            log.error("embedded_redis_died", reason=reason)
            if not await self._bring_back(reason):
                return

    async def _bring_back(self, reason: str) -> bool:
        """Restart with backoff until the server runs (True) or the limit is reached."""
        while True:
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > RESTART_WINDOW_SECONDS:
                self._restarts.popleft()
            if len(self._restarts) >= RESTART_LIMIT:
                self.gave_up = True
                log.critical(
                    "embedded_redis_gave_up",
                    restarts=len(self._restarts),
                    window_seconds=RESTART_WINDOW_SECONDS,
                    reason=reason,
                    detail="/healthz now answers 503 so that a supervisor restarts serve",
                )
                return False
            await asyncio.sleep(
                min(
                    RESTART_BACKOFF_CAP_SECONDS,
                    RESTART_BACKOFF_BASE_SECONDS * 2 ** len(self._restarts),
                )
            )
            self._restarts.append(time.monotonic())
            metrics.EMBEDDED_REDIS_RESTARTS.inc()
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._embedded.restart))
            try:
                await asyncio.shield(self._starting)
            except ConfigError:
                reason = self._embedded.exit_reason()
                log.error(
                    "embedded_redis_restart_failed", attempt=len(self._restarts), reason=reason
                )
                continue
            finally:
                if self._starting.done():
                    self._starting = None
            log.warning("embedded_redis_restarted", attempt=len(self._restarts), after=reason)
            try:
                await self._on_restart()  # scripts and consumer groups, if Redis lost them
            except REDIS_ERRORS as exc:
                log.warning("embedded_redis_prepare_failed", error=type(exc).__name__)
            return True
