"""``receiver config check`` and ``receiver sink init``."""

from __future__ import annotations

import click

from receiver import ops
from receiver.cli.common import fail, load_settings, run_async
from receiver.redaction import redact_text


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
@click.option("--strict", is_flag=True, help="Fail (exit 1) on warnings too.")
def config_check(strict: bool) -> None:
    """Validate the configuration, print it (secrets masked), and probe Redis and the sink."""
    settings = load_settings()
    report = run_async(lambda: ops.check_config(settings))
    click.echo("config: valid")
    for name, value in report.settings:
        click.echo(f"  {name + ':':<20}{value}")
    for check in report.checks:
        click.echo(f"{check.name}: {check.detail}")
    for warning in report.warnings:
        click.echo(f"WARNING: {warning}")
    if not report.ok:
        failed = ", ".join(check.name for check in report.checks if not check.ok)
        fail(f"config check failed: {failed}")
    if strict and report.warnings:
        fail(f"config check failed: {len(report.warnings)} warning(s) and --strict")


@click.group()
def sink() -> None:
    """Manage the product-record sink."""


@sink.command("init")
def sink_init() -> None:
    """Create the sink's tables (idempotent)."""
    settings = load_settings()
    try:
        label = run_async(lambda: ops.init_sink(settings))
    except Exception as exc:  # any sink (third-party ones too) may raise anything: report it
        fail(f"sink: setup failed ({type(exc).__name__}: {redact_text(str(exc))[:200]})")
    click.echo(f"sink ready: {label}")
