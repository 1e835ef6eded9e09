"""What every command shares: exit codes, the one error-to-exit-code map, settings, Redis.

Exit codes (SPEC §7): 0 success, 1 failure (a bad configuration included), 2 usage.
Commands raise; ``ReceiverGroup`` turns what they raise into one line on stderr and an exit
code, in this one place: a ``ConfigError`` names its variable, a Redis failure says Redis
failed, a ``CommandError`` says what the command found. Never a traceback, never a secret.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from receiver.errors import ConfigError
from receiver.logs import configure_logging, get_logger
from receiver.redaction import printable, redact_text
from receiver.redis_client import REDIS_ERRORS
from receiver.settings import DEFAULT_SOURCE, Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


class CommandError(Exception):
    """What a command found wrong, for the user: one line, then ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Stop the command with ``receiver: message`` on stderr and exit ``code``."""
    raise CommandError(message, code)


def exit_line(exc: BaseException) -> tuple[str, int] | None:
    """The line and exit code for an error a command let through; None for a bug."""
    if isinstance(exc, CommandError):
        return str(exc), exc.exit_code
    if isinstance(exc, ConfigError):
        return f"configuration error: {exc}", EXIT_FAILURE
    if isinstance(exc, REDIS_ERRORS):
        detail = redact_text(str(exc))[:200]
        return f"redis: {type(exc).__name__}: {detail}".rstrip(": "), EXIT_FAILURE
    return None


class ReceiverGroup(click.Group):
    """A click group whose commands' errors become one line and an exit code (above)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            answer = exit_line(exc)
            if answer is None:
                raise
            message, code = answer
            # Messages may quote what the user typed or a server said: never raw.
            click.echo(f"receiver: {printable(message)}", err=True)
            raise SystemExit(code) from None


# What a command needs beyond Redis (issue 14: each process needs only what it uses).
SIGNING = "signing"  # the webhook signing keys: serve, send-test, verify


def load_settings(*, service: bool = False, needs: tuple[str, ...] = ()) -> Settings:
    """Settings from the environment, with logging configured; ConfigError if invalid.

    ``service`` (serve, worker) logs to stdout; every other command logs to stderr so its
    own output stays clean for scripts. ``needs`` names what this command cannot run
    without (``SIGNING``); the sink's own requirements are checked when it is opened.
    """
    settings = Settings.from_env(os.environ)
    if SIGNING in needs:
        settings.require_signing_keys()
    configure_logging(settings.log_level, settings.log_format, to_stderr=not service)
    if service:  # `config check` lists them itself; other commands stay quiet
        for warning in settings.warnings:
            get_logger("receiver.config").warning("config_warning", detail=warning)
    return settings


def settings_for(source: str, *, needs: tuple[str, ...] = ()) -> Settings:
    """Settings (exit 1 on a bad configuration) and a known ``--source`` (exit 2)."""
    settings = load_settings(needs=needs)
    if source not in settings.event_sources:
        known = ", ".join(settings.event_sources)
        fail(f"unknown source {source!r} (configured: {known})", EXIT_USAGE)
    return settings


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when available (uvicorn[standard] installs it)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return asyncio.run(factory())
    return uvloop.run(factory())


def with_runtime(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(runtime)`` against the configured (or embedded) Redis, then close it.

    Works beside a running ``serve``: the embedded Redis it started is reused (SPEC §9);
    with none running, the embedded Redis is started for the command, but only where a
    store already exists (``require_existing_store``).
    """
    from receiver.runtime import Runtime

    require_existing_store(settings)

    async def run() -> T:
        runtime = await Runtime.open(settings)
        try:
            return await work(runtime)
        finally:
            await runtime.aclose()

    return run_async(run)


def require_existing_store(settings: Settings) -> None:
    """Fail unless the embedded Redis has a running service or stored data to read.

    ``serve`` and ``worker`` create the store; an ops command run from the wrong directory
    would otherwise start an empty Redis there and report "no events match" (issue 14).
    """
    if not settings.embedded_redis:
        return
    from receiver.embedded import EmbeddedRedis

    embedded = EmbeddedRedis.for_data_dir(settings.data_dir)
    if not embedded.has_data():
        fail(embedded.no_store_message())


source_option = click.option(
    "--source", default=DEFAULT_SOURCE, show_default=True, help="The configured source."
)
