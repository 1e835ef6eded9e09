"""``receiver config check`` and ``receiver sink init``."""

from __future__ import annotations

import os
from typing import Any

import click

from receiver import ops
from receiver.cli.common import EXIT_FAILURE, fail, load_settings, run_async
from receiver.cli.output import print_json
from receiver.errors import SinkError
from receiver.redaction import printable, redact_text
from receiver.settings import Settings, unknown_variables


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too.")
def config_check(as_json: bool, strict: bool) -> None:
    """Validate the configuration (every error at once), print it with secrets masked,
    and probe Redis and the sink. Exit 1 on an error, or with --strict on a warning."""
    errors = [str(error) for error in Settings.check_env(os.environ)]
    warnings = unknown_variables(os.environ)
    report: ops.ConfigReport | None = None
    if not errors:
        settings = load_settings()
        report = run_async(lambda: ops.check_config(settings))
        warnings += report.warnings
    failed = [check.name for check in report.checks if not check.ok] if report else []
    ok = not errors and not failed and not (strict and warnings)
    if as_json:
        print_json(_as_json(ok, errors, warnings, report))
    else:
        _print_text(errors, warnings, report)
    if ok:
        return
    if as_json:
        raise SystemExit(EXIT_FAILURE)
    if errors:
        fail(f"config check failed: {len(errors)} configuration error(s)")
    if failed:
        fail(f"config check failed: {', '.join(failed)}")
    fail(f"config check failed: {len(warnings)} warning(s) and --strict")


def _as_json(
    ok: bool, errors: list[str], warnings: list[str], report: ops.ConfigReport | None
) -> dict[str, Any]:
    return {
        "ok": ok,
        "valid": not errors,
        "errors": errors,
        "warnings": warnings,
        "settings": dict(report.settings) if report else {},
        "checks": [
            {"name": check.name, "ok": check.ok, "detail": check.detail}
            for check in (report.checks if report else [])
        ],
    }


def _print_text(errors: list[str], warnings: list[str], report: ops.ConfigReport | None) -> None:
    if errors:
        click.echo(f"config: {len(errors)} error(s)")
        for error in errors:
            click.echo(f"ERROR: {printable(error)}")
    else:
        click.echo("config: valid")
    if report is not None:
        for name, value in report.settings:
            click.echo(f"  {name + ':':<20}{printable(value)}")
        for check in report.checks:
            click.echo(f"{check.name}: {printable(check.detail)}")
    for warning in warnings:
        click.echo(f"WARNING: {printable(warning)}")


@click.group()
def sink() -> None:
    """Manage the product-record sink."""


@sink.command("init")
def sink_init() -> None:
    """Create the sink's tables (idempotent)."""
    settings = load_settings()
    try:
        label = run_async(lambda: ops.init_sink(settings))
    except SinkError as exc:  # our sinks' errors already say which sink and why
        fail(f"sink: setup failed: {printable(redact_text(str(exc)))[:300]}")
    except Exception as exc:  # any sink (third-party ones too) may raise anything: report it
        detail = printable(redact_text(str(exc)))[:200]
        fail(f"sink: setup failed ({type(exc).__name__}: {detail})")
    click.echo(f"sink ready: {label}")
