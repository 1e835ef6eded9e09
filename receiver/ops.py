"""What operators do with stored events: list, show, replay, audit, re-encrypt, check.

The queries and actions behind ``receiver events …``, ``replay``, ``send-test`` and
``config check`` (SPEC §7). No click here: the CLI parses, calls these, and prints.
Everything meant for printing comes out redacted unless the caller asks for raw data.
"""

from __future__ import annotations

import asyncio
import fnmatch
import getpass
import heapq
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from redis.exceptions import RedisError, ResponseError

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.embedded import EmbeddedRedis
from receiver.errors import ConfigError
from receiver.keys import AUDIT_MAX_ENTRIES, AUDIT_STREAM, ShardKeys, all_shards, member_of
from receiver.logs import get_logger, redact_text, redact_value
from receiver.models import EventState, format_time, parse_time
from receiver.redis_client import create_client
from receiver.settings import DEFAULT_SOURCE, Settings, SourceConfig, mask_url, parse_duration
from receiver.signing import HMAC_PREFIX, Scheme, sign_standard, sign_stripe
from receiver.sinks.base import open_sink
from receiver.store import EventStore, StoredEvent, now_ms

log = get_logger("receiver.ops")

# Members fetched per ZREVRANGEBYSCORE page, and hashes per pipelined HGETALL round trip.
PAGE_SIZE = 500
CHECK_TIMEOUT_SECONDS = 5.0
SEND_TEST_TIMEOUT_SECONDS = 10.0
# Audit entries name at most this many event ids; the count is always exact.
AUDIT_MAX_IDS = 50
# Compare-and-set of a re-encrypted body: only if the hash still holds the body we read,
# so an expired event is not resurrected without a TTL (a bare HSET would create it) and
# two concurrent re-encryptions cannot interleave.
REENCRYPT_SCRIPT = """
if redis.call('HGET', KEYS[1], 'body') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'encrypted', '1')
return 1
"""

Progress = Callable[[int, int], None]


class FilterError(ValueError):
    """An event filter option is malformed; the message names the option."""


class NoSigningSecret(Exception):
    """``send-test`` has no shared secret to sign with (only ``whpk_`` keys configured)."""


# -- filters -----------------------------------------------------------------------------


def parse_time_bound(text: str, now: int, option: str) -> int:
    """Milliseconds for ``2h``/``30m``/``7d`` (that long ago) or an ISO 8601 time."""
    text = text.strip()
    try:
        return now - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        return int(parse_time(text).timestamp() * 1000)
    except (ValueError, OverflowError):
        raise FilterError(
            f"{option}: not a duration (30m, 2h, 7d) or an ISO 8601 time: {text[:40]!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which stored events a list or bulk replay covers; all criteria must hold."""

    source: str | None = DEFAULT_SOURCE
    state: EventState | None = None
    event_type: str | None = None
    record_key: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise FilterError("--limit: must be at least 1")
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms > self.until_ms
        ):
            raise FilterError("--since: is after --until")

    @property
    def selects(self) -> bool:
        """True when something narrows the events beyond their source."""
        return any(
            value is not None
            for value in (
                self.state,
                self.event_type,
                self.record_key,
                self.since_ms,
                self.until_ms,
            )
        )

    def matches(self, event: StoredEvent) -> bool:
        # ``--type`` takes shell patterns (``generation.*``); a plain name matches itself.
        return (
            (self.state is None or event.state is self.state)
            and (self.event_type is None or fnmatch.fnmatchcase(event.event_type, self.event_type))
            and (self.record_key is None or event.record_key == self.record_key)
        )

    def describe(self) -> dict[str, Any]:
        """The filter as JSON-ready values (times as ISO 8601), for audit entries."""
        described: dict[str, Any] = {
            "source": self.source,
            "status": self.state.value if self.state else None,
            "type": self.event_type,
            "record": self.record_key,
            "since": iso_ms(self.since_ms) if self.since_ms is not None else None,
            "until": iso_ms(self.until_ms) if self.until_ms is not None else None,
            "limit": self.limit,
        }
        return {key: value for key, value in described.items() if value is not None}


def iso_ms(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC))


# -- listing -----------------------------------------------------------------------------


async def list_events(store: EventStore, event_filter: EventFilter) -> list[StoredEvent]:
    """Matching events, newest first, at most ``limit``; expired index entries are skipped."""
    # Fix the upper bound now: events arriving while we page land above it and cannot
    # shift the offsets of the pages still to come.
    upper = event_filter.until_ms if event_filter.until_ms is not None else now_ms()
    per_shard = [
        await _scan_shard(store, shard, event_filter, upper) for shard in all_shards(store.shards)
    ]
    merged = heapq.merge(*per_shard, key=lambda event: -event.received_ms)
    events = list(merged)
    return events[: event_filter.limit] if event_filter.limit is not None else events


async def _scan_shard(
    store: EventStore, shard: ShardKeys, event_filter: EventFilter, upper: int
) -> list[StoredEvent]:
    # The dead set is far smaller than the index: walk it when only dead events qualify.
    zset = shard.dead if event_filter.state is EventState.DEAD else shard.index
    lower: int | str = event_filter.since_ms if event_filter.since_ms is not None else "-inf"
    prefix = f"{event_filter.source}|" if event_filter.source is not None else ""
    found: list[StoredEvent] = []
    seen: set[str] = set()
    offset = 0
    while event_filter.limit is None or len(found) < event_filter.limit:
        page = await store.client.zrevrangebyscore(zset, upper, lower, start=offset, num=PAGE_SIZE)
        if not page:
            break
        offset += len(page)
        members = [
            member
            for member in (raw.decode() for raw in page)
            if member.startswith(prefix) and member not in seen
        ]
        seen.update(members)
        for event in await load_many(store, members):
            if event is not None and event_filter.matches(event):
                found.append(event)
    return found[: event_filter.limit] if event_filter.limit is not None else found


async def load_many(store: EventStore, members: Sequence[str]) -> list[StoredEvent | None]:
    """The stored events for ``members`` in one pipelined round trip (None where gone)."""
    if not members:
        return []
    pipe = store.client.pipeline(transaction=False)
    for member in members:
        pipe.hgetall(store.keys(member).event(member))
    replies = await pipe.execute()
    return [
        StoredEvent.from_hash(member, fields) if fields else None
        for member, fields in zip(members, replies, strict=True)
    ]


def summary(event: StoredEvent) -> dict[str, Any]:
    """The fields ``events list --json`` prints (SPEC §9), not yet redacted."""
    return {
        "event_id": event.event_id,
        "source": event.source,
        "state": event.state.value,
        "type": event.event_type,
        "record_key": event.record_key,
        "received_at": iso_ms(event.received_ms),
        "attempts": event.attempts,
        "last_error": event.last_error,
    }


# -- one event ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One stored event with its history and its body (decrypted, if a key opens it)."""

    event: StoredEvent
    history: list[dict[str, Any]]
    body: bytes | None
    body_error: str | None = None

    def to_json(self, *, raw: bool = False) -> dict[str, Any]:
        """Everything about the event; redacted like the logs unless ``raw``."""
        data: dict[str, Any] = {
            **summary(self.event),
            "signed_at": iso_ms(self.event.signed_ts * 1000) if self.event.signed_ts else None,
            "content_type": self.event.content_type,
            "encrypted": self.event.encrypted,
            "body_sha256": self.event.body_sha256,
            "history": [
                {"at": iso_ms(int(entry.get("at_ms", 0))), **entry} for entry in self.history
            ],
        }
        if self.body_error is not None:
            data["body_error"] = self.body_error
        if raw:
            data["body"] = self.body.decode("utf-8", "replace") if self.body is not None else None
            return data
        data["body"] = redacted_body(self.body) if self.body is not None else None
        redacted: dict[str, Any] = redact_value(data)
        return redacted


def redacted_body(body: bytes) -> Any:
    """The body as JSON passed through the log redaction, or redacted text if not JSON."""
    try:
        return redact_value(orjson.loads(body))
    except orjson.JSONDecodeError:
        return redact_text(body.decode("utf-8", "replace"))


async def show_event(
    store: EventStore, cipher: BodyCipher, source: str, event_id: str
) -> EventDetail | None:
    """The event ``event_id`` of ``source``, or None if unknown or expired."""
    member = member_of(source, event_id)
    event = await store.load(member)
    if event is None:
        return None
    history = await store.history(member)
    try:
        return EventDetail(event, history, cipher.open(event.body, event.encrypted))
    except BodyDecryptError as exc:
        return EventDetail(event, history, None, str(exc))


# -- replay and audit --------------------------------------------------------------------


@dataclass(slots=True)
class ReplayResult:
    """How a replay went; ``missing`` names events no longer stored."""

    total: int
    queued: int = 0
    missing: list[str] = field(default_factory=list)
    completed: bool = False


async def existing(store: EventStore, members: Sequence[str]) -> list[bool]:
    """Whether each member is still stored (one pipelined round trip)."""
    if not members:
        return []
    pipe = store.client.pipeline(transaction=False)
    for member in members:
        pipe.exists(store.keys(member).event(member))
    return [bool(count) for count in await pipe.execute()]


async def replay(
    store: EventStore,
    members: Sequence[str],
    *,
    by: str,
    rate: float | None = None,
    progress: Progress | None = None,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Requeue each member through the ordering guard, at most ``rate`` per second.

    Pass ``result`` to keep the counts of an interrupted replay (for its audit entry).
    """
    result = result if result is not None else ReplayResult(total=len(members))
    started = time.monotonic()
    for done, member in enumerate(members):
        if rate is not None:
            # Pace against the start, not the previous event, so slow calls do not add up.
            delay = started + done / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if await store.requeue(member, by=by):
            result.queued += 1
        else:
            result.missing.append(member)
        if progress is not None:
            progress(done + 1, len(members))
    result.completed = True
    return result


def current_user() -> str:
    """The OS user running the command, for audit entries without ``--actor``."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry
        return "unknown"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited replay (or dry run): who, when, what filter, how many."""

    actor: str
    source: str
    filter: dict[str, Any]
    ids: int
    matched: int
    queued: int
    missing: int
    dry_run: bool
    completed: bool = True
    at_ms: int = field(default_factory=now_ms)
    entry_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "at_ms": str(self.at_ms),
            "actor": self.actor,
            "source": self.source,
            "filter": orjson.dumps(self.filter).decode(),
            "ids": str(self.ids),
            "matched": str(self.matched),
            "queued": str(self.queued),
            "missing": str(self.missing),
            "dry_run": "1" if self.dry_run else "0",
            "completed": "1" if self.completed else "0",
        }

    @classmethod
    def from_fields(cls, entry_id: str, raw: dict[bytes, bytes]) -> AuditEntry:
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        try:
            audit_filter = orjson.loads(fields.get("filter", "{}"))
        except orjson.JSONDecodeError:
            audit_filter = {"unreadable": fields.get("filter", "")}
        return cls(
            actor=fields.get("actor", ""),
            source=fields.get("source", ""),
            filter=audit_filter if isinstance(audit_filter, dict) else {"value": audit_filter},
            ids=int(fields.get("ids", 0) or 0),
            matched=int(fields.get("matched", 0) or 0),
            queued=int(fields.get("queued", 0) or 0),
            missing=int(fields.get("missing", 0) or 0),
            dry_run=fields.get("dry_run") == "1",
            completed=fields.get("completed", "1") == "1",
            at_ms=int(fields.get("at_ms", 0) or 0),
            entry_id=entry_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "at": iso_ms(self.at_ms),
            "actor": self.actor,
            "source": self.source,
            "filter": self.filter,
            "ids": self.ids,
            "matched": self.matched,
            "queued": self.queued,
            "missing": self.missing,
            "dry_run": self.dry_run,
            "completed": self.completed,
        }


def audit_filter(event_filter: EventFilter | None, event_ids: Sequence[str]) -> dict[str, Any]:
    """What a replay selected, for its audit entry: the filter, or the ids (capped)."""
    if event_filter is not None:
        return event_filter.describe()
    described: dict[str, Any] = {"event_ids": list(event_ids[:AUDIT_MAX_IDS])}
    if len(event_ids) > AUDIT_MAX_IDS:
        described["event_ids_omitted"] = len(event_ids) - AUDIT_MAX_IDS
    return described


async def write_audit(client: Any, entry: AuditEntry) -> str:
    """Append ``entry`` to the audit stream (trimmed approximately) and log it."""
    entry_id = await client.xadd(
        AUDIT_STREAM, entry.fields(), maxlen=AUDIT_MAX_ENTRIES, approximate=True
    )
    text_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    fields = {key: value for key, value in entry.to_json().items() if key != "id"}
    log.info("replay_audited", audit_id=text_id, **fields)
    return text_id


async def list_audit(client: Any, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, newest first."""
    raw = await client.xrevrange(AUDIT_STREAM, count=limit)
    return [AuditEntry.from_fields(entry_id.decode(), fields) for entry_id, fields in raw]


# -- re-encryption -----------------------------------------------------------------------


@dataclass(slots=True)
class ReencryptResult:
    """Bodies moved to the first key; ``gone`` expired meanwhile; ``failed`` no key opens."""

    total: int = 0
    rotated: int = 0
    gone: int = 0
    failed: list[str] = field(default_factory=list)


async def reencrypt(
    store: EventStore, cipher: BodyCipher, progress: Progress | None = None
) -> ReencryptResult:
    """Re-encrypt every stored body under the newest (first) key; plaintext gets encrypted.

    Raises BodyDecryptError when no encryption key is configured.
    """
    if not cipher.enabled:
        raise BodyDecryptError("RECEIVER_ENCRYPTION_KEYS is not set")
    shards = all_shards(store.shards)
    result = ReencryptResult()
    for shard in shards:
        result.total += int(await store.client.zcard(shard.index))
    done = 0
    for shard in shards:
        # ZSCAN rather than offset pages: events may expire from the index meanwhile.
        cursor = 0
        while True:
            cursor, page = await store.client.zscan(shard.index, cursor, count=PAGE_SIZE)
            members = [raw.decode() for raw, _score in page]
            pipe = store.client.pipeline(transaction=False)
            for member in members:
                pipe.hmget(store.keys(member).event(member), "body", "encrypted")
            stored = await pipe.execute() if members else []
            for member, (body, encrypted) in zip(members, stored, strict=True):
                done += 1
                if body is None:
                    result.gone += 1
                else:
                    await _rotate_one(store, cipher, member, body, encrypted == b"1", result)
                if progress is not None:
                    progress(done, max(done, result.total))
            if int(cursor) == 0:
                break
    return result


async def _rotate_one(
    store: EventStore,
    cipher: BodyCipher,
    member: str,
    body: bytes,
    encrypted: bool,
    result: ReencryptResult,
) -> None:
    try:
        sealed = cipher.rotate(body, encrypted)
    except BodyDecryptError:
        result.failed.append(member)
        return
    changed = await store.client.eval(
        REENCRYPT_SCRIPT, 1, store.keys(member).event(member), body, sealed
    )
    if int(changed):
        result.rotated += 1
    else:
        result.gone += 1


# -- config check ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One dependency probed by ``config check``; ``detail`` reads ``ok (...)`` or why not."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class ConfigReport:
    settings: list[tuple[str, str]]
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def describe_settings(settings: Settings) -> list[tuple[str, str]]:
    """The settings as (name, value) lines; secrets only as their masked repr."""
    lines: list[tuple[str, str]] = []
    for name, source in sorted(settings.sources.items()):
        lines.append(
            (
                f"source {name}",
                f"scheme={source.scheme.value} keys={list(source.keys)!r} "
                f"tolerance={source.tolerance_seconds}s"
                + (f" header={source.signature_header}" if source.scheme is Scheme.STRIPE else ""),
            )
        )
    redis_text = (
        mask_url(settings.redis_url.reveal())
        if settings.redis_url is not None
        else f"embedded ({settings.data_dir / 'redis'})"
    )
    lines += [
        ("redis", redis_text),
        ("sink", mask_url(settings.sink_url.reveal())),
        ("data dir", str(settings.data_dir)),
        ("retention", f"{settings.retention_seconds}s"),
        (
            "encryption",
            f"{len(settings.encryption_keys)} key(s) {list(settings.encryption_keys)!r}"
            if settings.encryption_keys
            else "off (bodies stored in plaintext)",
        ),
        ("forward secret", repr(settings.forward_secret) if settings.forward_secret else "not set"),
        ("max body", f"{settings.max_body_bytes} bytes"),
        ("max attempts", str(settings.max_attempts)),
        ("visibility timeout", f"{settings.visibility_timeout_seconds}s"),
        ("workers", f"concurrency={settings.worker_concurrency} shards={settings.queue_shards}"),
        ("logs", f"{settings.log_format} {settings.log_level}"),
    ]
    return lines


def _failure(exc: BaseException) -> str:
    message = redact_text(str(exc))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def check_config(
    settings: Settings, wait_seconds: float = CHECK_TIMEOUT_SECONDS
) -> ConfigReport:
    """Probe Redis and the sink and read the Redis settings durability depends on."""
    report = ConfigReport(describe_settings(settings))
    await _check_redis(settings, wait_seconds, report)
    await _check_sink(settings, wait_seconds, report)
    return report


async def _check_redis(settings: Settings, wait_seconds: float, report: ConfigReport) -> None:
    embedded: EmbeddedRedis | None = None
    try:
        if settings.redis_url is not None:
            url = settings.redis_url.reveal()
        else:
            embedded = EmbeddedRedis.for_data_dir(settings.data_dir)
            url = await asyncio.to_thread(embedded.ensure_running)
    except ConfigError as exc:
        report.checks.append(Check("redis", False, f"cannot start the embedded Redis ({exc})"))
        return
    # One attempt with a short timeout: a check should answer fast, not retry like start-up.
    client = create_client(url, timeout=wait_seconds)
    try:
        started = time.perf_counter()
        await asyncio.wait_for(client.ping(), wait_seconds)
        elapsed = (time.perf_counter() - started) * 1000
        report.checks.append(Check("redis", True, f"ok ({mask_url(url)}, {elapsed:.1f} ms)"))
        await _check_durability(client, report)
    except (RedisError, OSError, TimeoutError) as exc:
        report.checks.append(Check("redis", False, f"unreachable ({_failure(exc)})"))
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _config_value(client: Any, name: str) -> str | None:
    """``CONFIG GET name``; None when CONFIG is disabled or renamed (managed Redis)."""
    try:
        reply = await client.config_get(name)
    except ResponseError:
        return None
    if isinstance(reply, dict):
        value = reply.get(name)
        if isinstance(value, dict):  # a cluster client answers per node
            value = next(iter(value.values()), None)
        if isinstance(value, bytes):
            return value.decode()
        return value if isinstance(value, str) else None
    return None


async def _check_durability(client: Any, report: ConfigReport) -> None:
    policy = await _config_value(client, "maxmemory-policy")
    appendonly = await _config_value(client, "appendonly")
    if policy is None and appendonly is None:
        report.warnings.append(
            "redis: CONFIG GET is not allowed; check by hand that maxmemory-policy is "
            "noeviction and appendonly is yes"
        )
        return
    if policy is not None and policy != "noeviction":
        report.warnings.append(
            f"redis maxmemory-policy is {policy}, not noeviction: under memory pressure Redis "
            "may evict stored events and dedup keys (lost events, duplicates applied again)"
        )
    if appendonly is not None and appendonly != "yes":
        report.warnings.append(
            "redis appendonly is no: a Redis restart loses events acknowledged since the last "
            "snapshot, and their dedup keys with them"
        )


async def _check_sink(settings: Settings, wait_seconds: float, report: ConfigReport) -> None:
    label = mask_url(settings.sink_url.reveal())
    try:
        sink = open_sink(settings)
    except ConfigError as exc:
        report.checks.append(Check("sink", False, f"misconfigured ({exc})"))
        return
    try:
        await asyncio.wait_for(sink.ping(), wait_seconds)
        report.checks.append(Check("sink", True, f"ok ({label})"))
    except Exception as exc:  # a third-party sink's ping may raise anything: it failed
        report.checks.append(Check("sink", False, f"unreachable ({label}: {_failure(exc)})"))
    finally:
        await sink.aclose()


async def init_sink(settings: Settings) -> str:
    """Create what the sink needs (tables); returns the masked sink URL."""
    sink = open_sink(settings)
    try:
        await sink.setup()
    finally:
        await sink.aclose()
    return mask_url(settings.sink_url.reveal())


# -- send-test ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A signed, realistic Rivya delivery, ready to POST."""

    event_id: str
    task_id: str
    body: bytes
    headers: dict[str, str]


def sample_body(event_id: str, task_id: str, status: str, now: float) -> bytes:
    """An envelope like SPEC §2 around a generation that just finished."""
    updated = datetime.fromtimestamp(now, UTC)
    created = datetime.fromtimestamp(now - 60, UTC)
    failed = status == "failed"
    result_url = f"https://media.example/{task_id}.png"
    generation = {
        "id": task_id,
        "status": status,
        "model": "z-image",
        "reserved_credits": 1,
        "final_credits": 0 if failed else 1,
        "client_request_id": f"send-test-{task_id}",
        "created_at": _rivya_time(created),
        "updated_at": _rivya_time(updated),
        "result": None if failed else {"primary_url": result_url, "urls": [result_url]},
        "error": {"code": "generation_failed", "message": "send-test failure"} if failed else None,
    }
    return orjson.dumps(
        {
            "id": event_id,
            "type": f"generation.{status}",
            "api_version": "2026-05-11",
            "created_at": _rivya_time(updated),
            "data": generation,
        }
    )


def _rivya_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def build_delivery(
    source: SourceConfig,
    *,
    status: str = "succeeded",
    task_id: str | None = None,
    secret: str | None = None,
    now: float | None = None,
) -> Delivery:
    """Sign a fresh test event with ``secret`` or the source's first shared key.

    Raises NoSigningSecret when there is nothing to sign with (only ``whpk_`` keys).
    """
    now = time.time() if now is None else now
    timestamp = int(now)
    event_id = f"evt_{uuid.uuid4().hex}"
    task_id = task_id or f"task_test_{uuid.uuid4().hex[:12]}"
    body = sample_body(event_id, task_id, status, now)
    headers = {"content-type": "application/json", "user-agent": "receiver-send-test"}
    if source.scheme is Scheme.STRIPE:
        key = secret or source.keys[0].reveal()
        headers[source.signature_header] = sign_stripe(key, timestamp, body)
        return Delivery(event_id, task_id, body, headers)
    if secret is None:
        shared = [key.reveal() for key in source.keys if key.reveal().startswith(HMAC_PREFIX)]
        if not shared:
            raise NoSigningSecret(
                f"source {source.name} has only whpk_ (verify-only) keys; pass --secret whsec_..."
            )
        secret = shared[0]
    try:
        signature = sign_standard(secret, event_id, timestamp, body)
    except ValueError as exc:
        raise NoSigningSecret(f"--secret cannot sign: {exc}") from None
    headers.update(
        {
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
    )
    return Delivery(event_id, task_id, body, headers)


async def post_delivery(
    url: str, delivery: Delivery, wait_seconds: float = SEND_TEST_TIMEOUT_SECONDS
) -> tuple[int, Any]:
    """POST the delivery like Rivya does (no redirects); the status and the JSON answer.

    Raises httpx.HTTPError when the URL cannot be reached.
    """
    async with httpx.AsyncClient(timeout=wait_seconds, follow_redirects=False) as client:
        response = await client.post(url, content=delivery.body, headers=delivery.headers)
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text[:500]
    return response.status_code, answer
