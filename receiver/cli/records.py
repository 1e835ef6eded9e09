"""``receiver records show KEY``: the record as the sink holds it, and its events (item 9)."""

from __future__ import annotations

from typing import Any

import click

from receiver import ops
from receiver.cli.common import fail, settings_for, source_option, with_runtime
from receiver.cli.output import print_json
from receiver.errors import RecordNotReadable
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
        fail(str(exc))
    data = view.to_json()
    if as_json:
        print_json(data)
        return
    if data["record"] is None:
        click.echo(f"record {record_key}: the sink holds no such record")
    else:
        for name, value in data["record"].items():
            click.echo(f"{name + ':':<20}{'' if value is None else value}")
    click.echo("events (newest first):")
    for event in data["events"]:
        mark = "*" if data["set_by"] and event["event_id"] == data["set_by"]["event_id"] else " "
        click.echo(f" {mark} {event['received_at']}  {event['event_id']}  {event['state']}")
    if not data["events"]:
        click.echo("  none stored")
    if data["record"] is None:
        raise SystemExit(1)
