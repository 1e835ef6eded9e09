"""Reconcilers for tests: one in a thread (its own event loop, Redis client and HTTP
client, like a separate process), and the CLI run as a real process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import redis

from receiver.keys import all_watch_shards
from receiver.reconcile.api import DEFAULT_TIMEOUT_SECONDS
from receiver.settings import Settings
from tests.factories import base_env
from tests.fake_rivya import FakeRivya

API_KEY = "rvya_sk_test_reconcile_0123456789abcdef"


def reconcile_env(tmp_path: Path, redis_url: str, fake: FakeRivya, **extra: str) -> dict[str, str]:
    """Short settings, so each test runs in seconds: first check after 200 ms, 50 polls/s."""
    values = {
        "RECEIVER_RIVYA_API_KEY": API_KEY,
        "RECEIVER_RIVYA_API_URL": fake.url,
        "RECEIVER_RECONCILE_AFTER": "200ms",
        "RECEIVER_RECONCILE_RATE": "50/s",
        "RECEIVER_RETRY_BASE": "20ms",
        "RECEIVER_RETRY_MAX": "100ms",
        **extra,
    }
    return base_env(tmp_path, redis_url, **{k: v for k, v in values.items() if v})


class ReconcilerThread:
    """``Reconciler(runtime).run()`` on its own loop in a thread, until ``__exit__``."""

    def __init__(self, settings: Settings, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS):
        self.settings = settings
        self.timeout_seconds = timeout_seconds
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced in __exit__
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        from receiver.reconcile.reconciler import Reconciler
        from receiver.runtime import Runtime

        self._stop = asyncio.Event()
        runtime = await Runtime.open(self.settings)
        reconciler = Reconciler(runtime, timeout_seconds=self.timeout_seconds)
        task = asyncio.create_task(reconciler.run())
        self._ready.set()
        await self._stop.wait()
        await reconciler.stop(5)
        await task
        await runtime.aclose()

    def __enter__(self) -> ReconcilerThread:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(20)
        if self._error is not None:
            raise self._error


def cli(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m receiver ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def watched(client: redis.Redis, shards: int = 1) -> dict[str, float]:
    """Every watched task and its due (or lease-end) time in ms."""
    found: dict[str, float] = {}
    for shard in all_watch_shards(shards):
        for task, score in client.zrange(shard.due, 0, -1, withscores=True):
            found[task.decode()] = score
    return found


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None if absent."""
    wanted = name + (
        "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    )
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
