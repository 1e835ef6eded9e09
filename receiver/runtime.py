"""Open and close what a process needs: Redis (embedded or not), the event store, the sink.

One client per process, owned here and closed with ``aclose()`` (STYLE: no module-level
clients). ``serve``, ``worker`` and the CLI all start from ``Runtime.open``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from receiver.bodies import BodyCipher
from receiver.durability import enforce_at_start, read_durability
from receiver.embedded import EmbeddedRedis
from receiver.errors import ConfigError
from receiver.logs import get_logger
from receiver.readiness import PROBE_CONNECTIONS, Readiness
from receiver.redaction import Secret, mask_url
from receiver.redis_client import REDIS_ERRORS, create_client
from receiver.settings import Settings
from receiver.signing import Verifier
from receiver.sinks.base import Sink, open_sink
from receiver.store import EventStore
from receiver.supervision import EmbeddedRedisSupervisor

CONNECT_ATTEMPTS = 5
log = get_logger("receiver.runtime")


@dataclass
class Runtime:
    settings: Settings
    client: Any
    store: EventStore
    cipher: BodyCipher
    # Where Redis is (a Secret: the URL may hold a password), for connections of their own.
    redis_url: Secret
    embedded: EmbeddedRedis | None = None
    supervisor: EmbeddedRedisSupervisor | None = None
    sink: Sink | None = None
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    # Set by serve's app when it runs a worker: whether that worker's loop still runs, and
    # its view of the sink (True while its circuit is open); None when no worker runs here.
    worker_alive: Callable[[], bool] | None = None
    sink_failing: Callable[[], bool] | None = None
    draining: bool = False
    closed: bool = False
    _readiness: Readiness | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        with_sink: bool = False,
        adopt_orphan: bool = False,
        check_durability: bool = False,
        supervise: bool = False,
    ) -> Runtime:
        """Connect to Redis (starting the embedded one if needed) and prepare the store.

        ``check_durability`` (``serve``, ``worker``) logs what Redis's settings risk and
        refuses an evicting Redis; ``supervise`` (``serve``) restarts the embedded Redis
        when it dies.
        """
        embedded: EmbeddedRedis | None = None
        if settings.redis_url is None:
            embedded = EmbeddedRedis.for_data_dir(settings.data_dir)
            url = await asyncio.to_thread(embedded.ensure_running, adopt_orphan=adopt_orphan)
        else:
            url = settings.redis_url.reveal()
        client = create_client(url, timeout=settings.redis_timeout_seconds)
        store = EventStore(
            client,
            retention_seconds=settings.retention_seconds,
            shards=settings.queue_shards,
            redis_timeout_seconds=settings.redis_timeout_seconds,
        )
        try:
            await _prepare_with_retries(store, url)
            if check_durability:
                await _check_durability(client, settings)
        except BaseException:
            await client.aclose()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            raise
        runtime = cls(
            settings=settings,
            client=client,
            store=store,
            cipher=BodyCipher(settings.encryption_keys),
            redis_url=Secret(url),
            embedded=embedded,
            verifiers={
                name: Verifier(
                    source.scheme,
                    [key.reveal() for key in source.keys],
                    source.tolerance_seconds,
                    source.signature_header,
                )
                for name, source in settings.sources.items()
            },
        )
        if with_sink:
            runtime.sink = open_sink(settings)
        if supervise and embedded is not None:
            runtime.supervisor = EmbeddedRedisSupervisor(embedded, store.prepare)
            runtime.supervisor.start()
        return runtime

    @property
    def embedded_redis_down(self) -> bool:
        """True once the embedded Redis died and could not be brought back."""
        return self.supervisor is not None and self.supervisor.gave_up

    def liveness_failure(self) -> str | None:
        """Why only a restart of this process helps (the code ``/healthz`` answers), or None.

        The in-process worker died: the service would keep acknowledging events nobody
        applies. The embedded Redis died and its restarts failed (a full disk, a bad AOF).
        """
        if self.worker_alive is not None and not self.worker_alive() and not self.draining:
            return "worker_stopped"
        if self.embedded_redis_down:
            return "embedded_redis_down"
        return None

    @property
    def readiness(self) -> Readiness:
        """Write probes of this Redis on a connection of their own, shared by every listener
        of the process (public ``/readyz``, the admin listener, the console)."""
        if self._readiness is None:
            client = create_client(
                self.redis_url.reveal(),
                max_connections=PROBE_CONNECTIONS,
                timeout=self.settings.redis_timeout_seconds,
            )
            self._readiness = Readiness(
                client,
                shards=self.settings.queue_shards,
                timeout_seconds=self.settings.redis_timeout_seconds,
            )
        return self._readiness

    async def aclose(self) -> None:
        """Close in dependency order: sink, store, client, then the embedded Redis. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.supervisor is not None:  # first: stopping Redis below is not a death
            await self.supervisor.aclose()
        if self.sink is not None:
            try:
                await self.sink.aclose()
            except Exception:  # a third-party sink failing to close must not keep Redis up
                log.exception("sink_close_failed")
        if self._readiness is not None:
            await self._readiness.aclose()
        await self.store.aclose()
        await self.client.aclose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def _prepare_with_retries(store: EventStore, url: str) -> None:
    """Ping with bounded retries: a Redis that is still starting is not an error yet."""
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            await store.client.ping()
            await store.prepare()
            return
        except REDIS_ERRORS as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise ConfigError(
                    f"RECEIVER_REDIS_URL: cannot reach Redis at {mask_url(url)}: "
                    f"{type(exc).__name__}"
                ) from None
            await asyncio.sleep(0.2 * 2**attempt)


async def _check_durability(client: Any, settings: Settings) -> None:
    try:
        durability = await read_durability(client)
    except REDIS_ERRORS as exc:  # answered PING but not CONFIG GET in time: say so, go on
        log.warning("redis_config_unreadable", error=type(exc).__name__)
        return
    enforce_at_start(durability, settings)
