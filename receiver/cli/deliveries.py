"""``receiver deliveries list --rejected``: rejected deliveries and why (issue 14, item 3)."""

from __future__ import annotations

import click

from receiver import ops
from receiver.cli.common import EXIT_USAGE, fail, load_settings, with_runtime
from receiver.cli.filters import TimeBound
from receiver.cli.output import Column, print_json, print_table

REJECTED_COLUMNS = tuple(
    Column(key, key.upper(), whole=key in ("at", "id", "event_id"))
    for key in ("at", "id", "source", "status", "code", "skew_s", "client", "event_id", "reason")
)


@click.group()
def deliveries() -> None:
    """Inspect deliveries that were not stored."""


@deliveries.command("list")
@click.option("--rejected", is_flag=True, help="Rejected deliveries (the only kind kept).")
@click.option("--since", type=TimeBound(), help="Rejected after: 2h, 30m, 7d or ISO.")
@click.option("--code", help="Only this code (invalid_signature, ...) or status (401).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def list_deliveries(
    rejected: bool, since: int | None, code: str | None, limit: int, as_json: bool
) -> None:
    """List rejected deliveries, newest first: reason, skew, header names, client."""
    if not rejected:
        fail("only rejected deliveries are kept: pass --rejected", EXIT_USAGE)
    settings = load_settings()
    page = with_runtime(
        settings,
        lambda runtime: ops.list_rejected(runtime.store, since_ms=since, code=code, limit=limit),
    )
    rows = [delivery.to_json() for delivery in page.deliveries]
    if as_json:
        print_json(rows)
        return
    print_table(
        REJECTED_COLUMNS,
        [
            {
                **{key: "" if value is None else str(value) for key, value in row.items()},
                "skew_s": "" if row["skew_seconds"] is None else str(row["skew_seconds"]),
            }
            for row in rows
        ],
    )
    if not rows:
        click.echo("no rejected deliveries recorded", err=True)
