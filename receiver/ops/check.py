"""``config check`` and ``sink init``: show the settings, probe Redis and the sink.

Settings print with secrets masked; probes answer within a short timeout and report the
Redis settings durability depends on (SPEC §7, ``receiver.durability``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from receiver.durability import read_durability
from receiver.embedded import EmbeddedRedis
from receiver.errors import ConfigError
from receiver.redaction import mask_url, redact_text
from receiver.redis_client import REDIS_ERRORS, create_client
from receiver.settings import Settings
from receiver.signing import Scheme
from receiver.sinks.base import open_sink

CHECK_TIMEOUT_SECONDS = 5.0


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
        (
            "retries",
            f"for {settings.retry_for_seconds:g}s after the first failure, backoff "
            f"{settings.retry_base_seconds:g}s..{settings.retry_max_seconds:g}s, "
            + (
                f"at most {settings.max_attempts} attempts"
                if settings.max_attempts
                else "no count limit"
            ),
        ),
        ("circuit breaker", f"opens after {settings.circuit_failures} failed batches in a row"),
        ("visibility timeout", f"{settings.visibility_timeout_seconds}s"),
        ("workers", f"concurrency={settings.worker_concurrency} shards={settings.queue_shards}"),
        ("logs", f"{settings.log_format} {settings.log_level}"),
        (
            "reconcile",
            f"api={settings.rivya_api_url} key="
            + (
                f"{settings.rivya_api_key!r} in {settings.rivya_api_key_header}"
                if settings.rivya_api_key is not None
                else "not set (no polling in this process)"
            )
            + f" after={settings.reconcile_after_seconds:g}s"
            f" max_age={settings.reconcile_max_age_seconds:g}s rate={settings.reconcile_rate:g}/s",
        ),
    ]
    return lines


def _failure(exc: BaseException) -> str:
    message = redact_text(str(exc))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def check_config(
    settings: Settings, wait_seconds: float = CHECK_TIMEOUT_SECONDS
) -> ConfigReport:
    """Probe Redis and the sink and read the Redis settings durability depends on; the
    settings' own warnings (weak keys) come first."""
    report = ConfigReport(describe_settings(settings), warnings=list(settings.warnings))
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
            if not await asyncio.to_thread(embedded.has_data):
                # Starting it would create an empty store here, which the ops commands
                # would then take for the service's (issue 14): say so, create nothing.
                # Not a warning: before the first `serve` this is how things are, and the
                # embedded server's durability settings are ours (appendfsync always).
                report.checks.append(
                    Check(
                        "redis",
                        True,
                        f"embedded, not created yet: no running service and no stored data "
                        f"under {embedded.directory} (serve creates it; set RECEIVER_DATA_DIR "
                        "if the service runs elsewhere)",
                    )
                )
                return
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
    except REDIS_ERRORS as exc:
        report.checks.append(Check("redis", False, f"unreachable ({_failure(exc)})"))
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _check_durability(client: Any, report: ConfigReport) -> None:
    report.warnings += (await read_durability(client)).warnings()


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
