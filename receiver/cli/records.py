"""``receiver records show KEY``: the record as the sink holds it, and its events (item 9)."""

from __future__ import annotations

from typing import Any

import click

from receiver import ops
from receiver.cli.common import fail, settings_for, source_option, with_runtime
from receiver.cli.output import OutputFormat, print_events, print_json
from receiver.errors import RecordNotReadable
from receiver.redaction import printable, redact_text
from receiver.sinks.base import open_sink


@click.group()
def records() -> None:
    """Read product records back from the sink."""


@records.command("show")
@click.argument("record_key")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@source_option
def show_record(record_key: str, as_json: bool, source: str) -> None:
    """Show the record KEY (a task id) as the sink holds it, with the events that shaped it."""
    settings = settings_for(source)

    async def work(runtime: Any) -> ops.RecordView:
        sink = open_sink(settings)
        try:
            return await ops.show_record(runtime.store, sink, record_key, source=source)
        finally:
            await sink.aclose()

    try:
        view = with_runtime(settings, work)
    except RecordNotReadable as exc:
        fail(printable(redact_text(str(exc))))
    data = view.to_json()
    if as_json:
        print_json(data)
        if data["record"] is None:
            raise SystemExit(1)
        return
    shown_key = printable(data["record_key"])
    if data["record"] is None:
        click.echo(f"record {shown_key}: the sink holds no such record")
    else:
        click.echo(f"record {shown_key}, as the sink holds it:")
        for name, value in data["record"].items():
            click.echo(f"  {name + ':':<20}{printable('' if value is None else str(value))}")
    set_by = data["set_by"]
    if set_by is not None:
        click.echo(f"set by event {printable(set_by['event_id'])} ({set_by['state']})")
    click.echo("events of this record, newest first:")
    if view.events:
        print_events(view.events, OutputFormat.TABLE)
    else:
        click.echo("  none stored")
    if data["record"] is None:
        raise SystemExit(1)
