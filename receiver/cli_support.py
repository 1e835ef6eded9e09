"""Helpers shared by the command modules: settings loading, exit codes, running coroutines.

Exit codes (SPEC §7): 0 success, 1 failure (including a bad configuration), 2 usage.
Configuration errors print one line naming the variable, never a traceback or a secret.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from receiver.errors import ConfigError
from receiver.logs import configure_logging
from receiver.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"receiver: {message}", err=True)
    raise SystemExit(code)


def load_settings(*, service: bool = False) -> Settings:
    """Settings from the environment, configured logging; one line and exit 1 on error.

    ``service`` (serve, worker) logs to stdout; every other command logs to stderr so its
    own output stays clean for scripts.
    """
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    configure_logging(settings.log_level, settings.log_format, to_stderr=not service)
    return settings


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop when available; ConfigError becomes one line and exit 1."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None:
            return uvloop.run(factory())
        return asyncio.run(factory())
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
