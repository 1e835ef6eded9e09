"""Open and close what a process needs: Redis (embedded or not), the event store, the sink.

One client per process, owned here and closed with ``aclose()`` (STYLE: no module-level
clients). ``serve``, ``worker`` and the CLI all start from ``Runtime.open``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from receiver.bodies import BodyCipher
from receiver.embedded import EmbeddedRedis
from receiver.errors import ConfigError
from receiver.logs import get_logger
from receiver.redaction import mask_url
from receiver.redis_client import REDIS_ERRORS, create_client
from receiver.settings import Settings
from receiver.signing import Verifier
from receiver.sinks.base import Sink, open_sink
from receiver.store import EventStore

CONNECT_ATTEMPTS = 5
log = get_logger("receiver.runtime")


@dataclass
class Runtime:
    settings: Settings
    client: Any
    store: EventStore
    cipher: BodyCipher
    embedded: EmbeddedRedis | None = None
    sink: Sink | None = None
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    draining: bool = False
    closed: bool = False

    @classmethod
    async def open(
        cls, settings: Settings, *, with_sink: bool = False, adopt_orphan: bool = False
    ) -> Runtime:
        """Connect to Redis (starting the embedded one if needed) and prepare the store."""
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
        return runtime

    async def aclose(self) -> None:
        """Close in dependency order: sink, store, client, then the embedded Redis. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.sink is not None:
            try:
                await self.sink.aclose()
            except Exception:  # a third-party sink failing to close must not keep Redis up
                log.exception("sink_close_failed")
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
