"""The ``Sink`` protocol and the one function that maps a sink URL to an implementation.

Built-in sinks are listed here by URL scheme; third parties register a factory under the
entry-point group ``receiver.sinks`` with the scheme as its name (SPEC §5).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from receiver.errors import ConfigError, RecordNotReadable
from receiver.models import ApplyOutcome, Record, SinkResult

if TYPE_CHECKING:
    from receiver.settings import Settings

ENTRY_POINT_GROUP = "receiver.sinks"


@runtime_checkable
class Sink(Protocol):
    """Applies records to the product store, guarding their order, and reads them back.

    ``apply`` must change the record only if ``record`` is newer than what is stored
    (``Record.is_newer_than``), atomically with respect to other workers, and return
    ``STALE`` otherwise. Re-applying the event that produced the stored state returns
    ``APPLIED`` without changing anything (a redelivery after a crash), also while another
    worker applies the same event at the same moment: decide on the stored record as the
    atomic write sees it, never on an earlier read. Failures raise
    ``TransientSinkError`` (retry) or ``PermanentSinkError`` (dead letter).

    What the sink can tell about an outcome goes into the event's attempt history
    (issue 14): instead of a bare ``ApplyOutcome`` it may answer a ``SinkResult`` whose
    ``held`` says what the record held when it was kept (a stale outcome: ``status``,
    ``source_updated_at``, ``last_event_id``), and an HTTP sink gives its downstream's
    answer (``status``, the first ≤ 512 bytes of the body, redacted) in the result or in
    the ``status``/``answer`` of the sink error it raises.

    ``read(record_key)`` answers the record as the sink holds it, in the shape of
    ``Record.to_json()``, or None when it has none; a sink that cannot read its records
    back (a downstream HTTP system, a log) raises ``RecordNotReadable``.

    Optionally a sink may also offer ``apply_many(records)``, answering a list with one
    outcome or sink error per record, in order; the worker then hands it each batch in one
    call (see ``apply_all``).
    """

    async def apply(self, record: Record) -> ApplyOutcome | SinkResult:
        """Apply one record; see the class docstring for the contract."""
        ...

    async def read(self, record_key: str) -> dict[str, Any] | None:
        """The record as stored, or None; ``RecordNotReadable`` if the sink cannot tell."""
        ...

    async def ping(self) -> None:
        """Raise if the backend cannot be reached (``config check``; never serve's ``/readyz``)."""
        ...

    async def setup(self) -> None:
        """Create what the sink needs (tables); idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


SinkAnswer = ApplyOutcome | SinkResult


async def read_record(sink: Sink, record_key: str) -> dict[str, Any] | None:
    """``sink.read(record_key)``; a third-party sink written before ``read`` existed is
    not readable (``RecordNotReadable``) rather than an AttributeError."""
    read = getattr(sink, "read", None)
    if read is None:
        raise RecordNotReadable(f"the {type(sink).__name__} sink cannot read records back")
    result: dict[str, Any] | None = await read(record_key)
    return result


async def apply_all(sink: Sink, records: Sequence[Record]) -> list[SinkAnswer | Exception]:
    """Apply a batch: one outcome or exception per record, in order.

    A sink may offer ``apply_many`` with the same answer (the built-in SQL sinks do: their
    group commit takes the batch in one step); any other sink has ``apply`` called for
    each record concurrently.
    """
    apply_many = getattr(sink, "apply_many", None)
    if apply_many is not None:
        results: list[SinkAnswer | Exception] = await apply_many(records)
        return results
    if len(records) == 1:  # no task needed for one
        try:
            return [await sink.apply(records[0])]
        except Exception as exc:
            return [exc]
    gathered = await asyncio.gather(*(sink.apply(r) for r in records), return_exceptions=True)
    return [_not_cancellation(result) for result in gathered]


def _not_cancellation(result: SinkAnswer | BaseException) -> SinkAnswer | Exception:
    if isinstance(result, BaseException) and not isinstance(result, Exception):
        raise result  # cancellation (or exit) of one apply ends the batch
    return result


SinkFactory = Callable[[str, "Settings"], Sink]

# scheme -> "module:factory"; imported lazily so a PostgreSQL driver is only loaded if used.
_BUILTIN: dict[str, str] = {
    "sqlite": "receiver.sinks.sqlite:SqliteSink",
    "postgresql": "receiver.sinks.postgres:PostgresSink",
    "postgres": "receiver.sinks.postgres:PostgresSink",
    "http": "receiver.sinks.http:HttpSink",
    "https": "receiver.sinks.http:HttpSink",
    "redis": "receiver.sinks.redis:RedisSink",
    "rediss": "receiver.sinks.redis:RedisSink",
    "log": "receiver.sinks.log:LogSink",
}


def sink_scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def find_factory(scheme: str) -> SinkFactory:
    """The factory for a URL scheme: built-ins first, then the entry-point group."""
    target = _BUILTIN.get(scheme)
    if target is not None:
        module_name, _, attribute = target.partition(":")
        factory: SinkFactory = getattr(importlib.import_module(module_name), attribute)
        return factory
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == scheme:
            loaded: SinkFactory = entry_point.load()
            return loaded
    plugins = {entry_point.name for entry_point in entry_points(group=ENTRY_POINT_GROUP)}
    known = ", ".join(sorted(set(_BUILTIN) | plugins))
    raise ConfigError(f"RECEIVER_SINK: no sink for scheme {scheme!r} (known: {known})")


def open_sink(settings: Settings) -> Sink:
    """Build the configured sink (no I/O yet: connections open on first use)."""
    url = settings.sink_url.reveal()
    return find_factory(sink_scheme(url))(url, settings)
