"""How commands print: JSON, tables, progress bars, event rows.

Tables are rich on a terminal and plain aligned text otherwise (for grep and awk); JSON is
machine-readable. Everything passes the redaction first unless a command prints ``--raw``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
import orjson

from receiver import ops
from receiver.redaction import redact_value

LAST_ERROR_WIDTH = 60


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> None:
    """A rich table on a terminal, aligned plain text otherwise (for grep and awk)."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None)
        for column in columns:
            # Fold rather than truncate: ids must stay whole to be copied into `show`.
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    header = [column.upper() for column in columns]
    widths = [max(len(cell) for cell in cells) for cells in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[ops.Progress | None]:
    """A rich progress bar on stderr when it is a terminal; None (no output) otherwise."""
    if not sys.stderr.isatty() or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(label, total=total)

        def update(done: int, of: int) -> None:
            progress.update(task, completed=done, total=of)

        yield update


def event_rows(events: Sequence[Any]) -> list[list[str]]:
    rows = []
    for event in events:
        data = redact_value(ops.summary(event))
        error = data["last_error"]
        rows.append(
            [
                data["received_at"],
                data["event_id"],
                data["state"],
                data["type"],
                data["record_key"],
                str(data["attempts"]),
                error if len(error) <= LAST_ERROR_WIDTH else error[: LAST_ERROR_WIDTH - 1] + "…",
            ]
        )
    return rows


EVENT_COLUMNS = ("received_at", "event_id", "state", "type", "record_key", "attempts", "last_error")
