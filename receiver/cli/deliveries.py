"""``receiver deliveries list --rejected``: rejected deliveries and why (issue 14, item 3).

Each row is one rejected request as the receiver recorded it: when, the answer and its
code, the verifier's one-line reason, the clock skew, the attempted event id; ``-o wide``
adds the client, the header names present (never their values), the body size and how
many keys were tried. ``receiver verify --rejected ID`` explains one.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from receiver import ops
from receiver.cli.common import EXIT_USAGE, fail, load_settings, with_runtime
from receiver.cli.filters import TimeBound
from receiver.cli.output import (
    Column,
    OutputFormat,
    age,
    notice,
    output_options,
    print_json,
    print_table,
)
from receiver.redaction import printable
from receiver.store import now_ms

ID_COLUMN = Column("id", "ID", whole=True, required=True)
AT_COLUMN = Column("at", "AT", whole=True, keep=2)
STATUS_COLUMN = Column("status", "STATUS", whole=True, keep=4)
# The attempted event id: whole or not at all (a cut id cannot be looked up).
EVENT_ID_COLUMN = Column("event_id", "EVENT_ID", whole=True, keep=0)
# Codes are short and what --code filters on: cut only after the free text.
CODE_COLUMN = Column("code", "CODE", keep=3)
REJECTED_COLUMNS = (
    ID_COLUMN,
    Column("age", "AGE", keep=2),
    STATUS_COLUMN,
    CODE_COLUMN,
    Column("skew", "SKEW", keep=1),
    EVENT_ID_COLUMN,
    Column("reason", "REASON", keep=2, budget=80),
)
REJECTED_COLUMNS_WIDE = (
    ID_COLUMN,
    AT_COLUMN,
    Column("source", "SOURCE", keep=1),
    STATUS_COLUMN,
    CODE_COLUMN,
    Column("skew", "SKEW", keep=1),
    Column("client", "CLIENT", keep=1),
    EVENT_ID_COLUMN,
    Column("body_bytes", "BODY_BYTES", keep=1),
    Column("keys_tried", "KEYS_TRIED", keep=1),
    Column("headers", "HEADERS", keep=0),
    Column("reason", "REASON", keep=2),
)


@click.group()
def deliveries() -> None:
    """Inspect deliveries that were not stored."""


@deliveries.command("list")
@click.option("--rejected", is_flag=True, help="Rejected deliveries (the only kind kept).")
@click.option("--since", type=TimeBound(), help="Rejected after: 2h, 30m, 7d or ISO.")
@click.option("--code", help="Only this code (invalid_signature, ...) or status (401).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@output_options
def list_deliveries(
    rejected: bool, since: int | None, code: str | None, limit: int, output: OutputFormat
) -> None:
    """List rejected deliveries, newest first: code, reason, skew, attempted event id."""
    if not rejected:
        fail("only rejected deliveries are kept: pass --rejected", EXIT_USAGE)
    settings = load_settings()
    page = with_runtime(
        settings,
        lambda runtime: ops.list_rejected(runtime.store, since_ms=since, code=code, limit=limit),
    )
    found = [delivery.to_json() for delivery in page.deliveries]
    if output is OutputFormat.JSON:
        print_json(found)
        return
    if output is OutputFormat.NAME:
        for item in found:
            click.echo(printable(item["id"]))
    else:
        columns = REJECTED_COLUMNS_WIDE if output is OutputFormat.WIDE else REJECTED_COLUMNS
        print_table(columns, rejected_rows(page.deliveries))
    if not found:
        notice("no rejected deliveries recorded")
    elif page.next_cursor is not None:
        notice(f"showing {len(found):,}; more match (raise --limit or narrow --since/--code)")


def rejected_rows(found: Sequence[ops.RejectedDelivery]) -> list[dict[str, str]]:
    """Table cells of recorded rejections (redacted by ``to_json``)."""
    now = now_ms()
    rows = []
    for delivery in found:
        item = delivery.to_json()
        skew = item.get("skew_seconds")
        rows.append(
            {
                **{key: "" if value is None else str(value) for key, value in item.items()},
                "age": age(now - delivery.at_ms),
                "skew": "" if skew is None else f"{skew:+d}s",
                "headers": ",".join(item.get("headers") or ()),
            }
        )
    return rows
