"""How commands print: tables, JSON, NDJSON streams, names, progress bars.

Everything printed from an event passes the redaction first (unless a command prints
``--raw``), then ``printable``: a signed body is untrusted, so no control character,
escape sequence or bidi override reaches the terminal, and cells are plain
``rich.text.Text``, so markup in a field (``[bold red]``, ``[/]``, ``[link=…]``) is shown
as typed, never obeyed. JSON is left to the encoder, which escapes what JSON must.

Tables (kubectl style): on a terminal, rich with the terminal's width; otherwise plain
aligned text for grep and awk, as wide as it needs unless ``COLUMNS`` says otherwise
(like ``ps``). A table never breaks a line inside a row and never cuts an id: other
columns are cut with ``…`` first, and dropped from the right when even that is not
enough. ``-o wide`` adds columns, ``-o json`` (or ``--json``) prints JSON, ``-o name``
prints ids only.
"""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import click
import orjson

from receiver import ops
from receiver.redaction import printable, redact_text, redact_value
from receiver.store import StoredEvent, now_ms

COLUMN_GAP = 2
# A cut column keeps at least this many cells (or its header's width, if wider).
MIN_CUT_WIDTH = 6
# Without -o wide, a free-text cell (an error) is cut here even where width is unlimited.
TEXT_CELL_BUDGET = 60


class OutputFormat(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    NAME = "name"


def output_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``-o wide|json|name`` and ``--json`` (= ``-o json``, SPEC §10), passed to the
    command as one ``output: OutputFormat``."""

    @functools.wraps(function)
    def command(*args: Any, output: str | None, as_json: bool, **kwargs: Any) -> Any:
        if as_json and output not in (None, OutputFormat.JSON):
            raise click.UsageError(f"--json and -o {output} ask for different outputs")
        chosen = OutputFormat.JSON if as_json else OutputFormat(output or OutputFormat.TABLE)
        return function(*args, output=chosen, **kwargs)

    command = click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (the same as -o json)."
    )(command)
    return click.option(
        "-o",
        "--output",
        type=click.Choice(
            [OutputFormat.WIDE.value, OutputFormat.JSON.value, OutputFormat.NAME.value]
        ),
        help="wide: more columns; json: JSON; name: ids only, one per line.",
    )(command)


# -- JSON --------------------------------------------------------------------------------


def print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def print_ndjson(value: Any) -> None:
    """One compact JSON object per line, flushed at once (for ``--follow`` and pipes)."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def shown_id(member: str) -> str:
    """The event id of a ``source|event_id`` member, as it is safe to print."""
    return printable(redact_text(member.partition("|")[2]))


def notice(message: str) -> None:
    """A line for the person, not the pipe: on stderr, so stdout stays parseable."""
    click.echo(printable(message), err=True)


# -- tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One table column; rows are mappings from ``key`` to the cell's text."""

    key: str
    header: str
    # Never cut: ids and states are what an operator copies into the next command.
    whole: bool = False
    # Never dropped either: the row's own id (another whole column may give way).
    required: bool = False
    # Cut to TEXT_CELL_BUDGET even where the width is unlimited (free text, not -o wide).
    budget: int | None = None
    # rich styles by cell value, on a terminal only.
    styles: Mapping[str, str] = field(default_factory=dict)
    # Room kept in a stream (--follow) before any row has been seen.
    stream_width: int = 0
    # Who gives way first: the lowest ``keep`` is cut first (down to MIN_CUT_WIDTH), and
    # dropped first when cutting is not enough (ties: the rightmost).
    keep: int = 0


def print_table(columns: Sequence[Column], rows: Sequence[Mapping[str, str]]) -> None:
    """The rows as a table that fits the terminal (rich) or aligned text (a pipe)."""
    cells = [[_cell(row.get(column.key, ""), column) for column in columns] for row in rows]
    headers = [column.header for column in columns]
    terminal = sys.stdout.isatty()
    widths = fit_widths(columns, [headers, *cells], _available_width(terminal))
    _print_lines(columns, widths, [headers, *cells], terminal)


def fit_widths(
    columns: Sequence[Column], lines: Sequence[Sequence[str]], width: int
) -> list[int | None]:
    """Each column's width, or None where it is dropped, so a line fits ``width`` cells
    (0: no limit). Whole columns keep their full width; the others are cut, lowest
    ``keep`` first (the widest of a level first), down to MIN_CUT_WIDTH; when that is not
    enough, the lowest-``keep`` column that is not required is dropped and the others get
    their room back."""
    from rich.cells import cell_len

    natural = [max(cell_len(line[index]) for line in lines) for index in range(len(columns))]
    if width <= 0:
        return list(natural)
    floors = [
        natural[index]
        if column.whole
        else min(natural[index], max(MIN_CUT_WIDTH, cell_len(column.header)))
        for index, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))
    while True:
        widths = {index: natural[index] for index in shown}
        excess = sum(widths.values()) + COLUMN_GAP * (len(shown) - 1) - width
        for level in sorted({columns[index].keep for index in shown}):
            excess = _cut(widths, floors, [i for i in shown if columns[i].keep == level], excess)
        droppable = [index for index in shown if not columns[index].required]
        if excess <= 0 or not droppable:
            # Fits, or only ids are left: the terminal wraps that line; nothing cuts an id.
            return [widths.get(index) for index in range(len(columns))]
        shown.remove(min(droppable, key=lambda index: (columns[index].keep, -index)))


def _cut(widths: dict[int, int], floors: Sequence[int], indexes: list[int], excess: int) -> int:
    """Narrow the ``indexes`` columns by up to ``excess`` cells, the widest first so cuts are
    shared, none below its floor; returns what is still in excess."""
    while excess > 0:
        cuttable = [index for index in indexes if widths[index] > floors[index]]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda index: (widths[index], index))
        cut = min(excess, widths[widest] - floors[widest])
        others = [widths[index] for index in cuttable if index != widest]
        if others and widths[widest] - cut < max(others):
            cut = max(1, widths[widest] - max(others))
        widths[widest] -= cut
        excess -= cut
    return excess


def _cell(value: Any, column: Column) -> str:
    text = printable("" if value is None else str(value))
    if column.budget is not None and len(text) > column.budget:
        text = text[: column.budget - 1] + "…"
    return text


def _available_width(terminal: bool) -> int:
    if terminal:
        from rich.console import Console

        return Console().width
    # Like ``ps``: a pipe gets whole lines unless COLUMNS asks for a width.
    return shutil.get_terminal_size((0, 0)).columns


def _fit(text: str, width: int) -> str:
    from rich.cells import cell_len, set_cell_size

    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1) + "…"


def _print_lines(
    columns: Sequence[Column],
    widths: Sequence[int | None],
    lines: Sequence[Sequence[str]],
    terminal: bool,
    *,
    header: bool = True,
) -> None:
    """Print ``lines`` cut to ``widths``; the first is the header when ``header``."""
    from rich.cells import cell_len

    shown = [index for index, width in enumerate(widths) if width is not None]
    if not terminal:
        for line in lines:
            parts = []
            for index in shown:
                text = _fit(line[index], widths[index] or 0)
                parts.append(text + " " * ((widths[index] or 0) - cell_len(text)))
            click.echo((" " * COLUMN_GAP).join(parts).rstrip())
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, emoji=False, markup=False)
    for number, line in enumerate(lines):
        row = Text(no_wrap=True, end="")
        for position, index in enumerate(shown):
            width = widths[index] or 0
            text = _fit(line[index], width)
            if position:
                row.append(" " * COLUMN_GAP)
            bold = header and number == 0
            style = "bold" if bold else columns[index].styles.get(line[index], "")
            row.append(text, style=style)
            if position < len(shown) - 1:
                row.append(" " * (width - cell_len(text)))
        row.rstrip()
        # soft_wrap: rich never inserts a line break; the fitted line is within the width.
        console.print(row, soft_wrap=True)


class TableStream:
    """Rows printed as they come (``--follow``): the header once, widths from the first
    rows (later, longer cells are cut, whole ones push the line out)."""

    def __init__(self, columns: Sequence[Column], first: Sequence[Mapping[str, str]]) -> None:
        self.columns = columns
        self.terminal = sys.stdout.isatty()
        headers = [column.header for column in columns]
        # Room for typical cells even when the stream starts empty.
        sample = ["x" * column.stream_width for column in columns]
        lines = [headers, sample, *([self._cells(row) for row in first])]
        self.widths = fit_widths(columns, lines, _available_width(self.terminal))
        _print_lines(columns, self.widths, [headers], self.terminal)

    def _cells(self, row: Mapping[str, str]) -> list[str]:
        return [_cell(row.get(column.key, ""), column) for column in self.columns]

    def print(self, rows: Sequence[Mapping[str, str]]) -> None:
        for row in rows:
            widths = self._row_widths(row)
            _print_lines(self.columns, widths, [self._cells(row)], self.terminal, header=False)
        sys.stdout.flush()

    def _row_widths(self, row: Mapping[str, str]) -> list[int | None]:
        from rich.cells import cell_len

        cells = self._cells(row)
        return [
            None if width is None else max(width, cell_len(cells[index])) if column.whole else width
            for index, (column, width) in enumerate(zip(self.columns, self.widths, strict=True))
        ]


# -- progress ----------------------------------------------------------------------------


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


# -- events ------------------------------------------------------------------------------

STATE_STYLES = {
    "pending": "yellow",
    "applied": "green",
    "stale": "dim",
    "dead": "bold red",
    "resolved": "cyan",
}
EVENT_ID_COLUMN = Column("event_id", "EVENT_ID", whole=True, required=True, stream_width=24)
STATE_COLUMN = Column(
    "state", "STATE", whole=True, required=True, styles=STATE_STYLES, stream_width=8
)
TYPE_COLUMN = Column("type", "TYPE", stream_width=20)
RECORD_COLUMN = Column("record_key", "RECORD_KEY", whole=True, keep=3, stream_width=24)
EVENT_COLUMNS = (
    EVENT_ID_COLUMN,
    STATE_COLUMN,
    TYPE_COLUMN,
    RECORD_COLUMN,
    Column("age", "AGE", stream_width=3, keep=1),
    Column("reason", "REASON", budget=TEXT_CELL_BUDGET, keep=2),
)
EVENT_COLUMNS_WIDE = (
    Column("received_at", "RECEIVED_AT", whole=True, keep=1, stream_width=24),
    EVENT_ID_COLUMN,
    Column("source", "SOURCE", stream_width=5),
    STATE_COLUMN,
    TYPE_COLUMN,
    RECORD_COLUMN,
    Column("attempts", "ATTEMPTS", keep=1),
    Column("reason_code", "REASON", stream_width=10, keep=2),
    Column("last_error", "LAST_ERROR", keep=2),
)


def print_events(found: Sequence[StoredEvent], output: OutputFormat) -> None:
    """Events as a table (default, wide), a JSON array, or their ids (``-o name``)."""
    if output is OutputFormat.JSON:
        print_json([redact_value(ops.summary(event)) for event in found])
    elif output is OutputFormat.NAME:
        for event in found:
            click.echo(printable(redact_text(event.event_id)))
    else:
        print_table(event_columns(output), event_rows(found))


def event_rows(found: Sequence[StoredEvent]) -> list[dict[str, str]]:
    """Table cells of events (redacted); REASON is the reason code, else the last error."""
    now = now_ms()
    rows = []
    for event in found:
        summary = redact_value(ops.summary(event))
        rows.append(
            {
                **{key: "" if value is None else str(value) for key, value in summary.items()},
                "age": age(now - event.received_ms),
                "reason": summary.get("reason_code") or summary.get("last_error") or "",
            }
        )
    return rows


def event_columns(output: OutputFormat) -> tuple[Column, ...]:
    return EVENT_COLUMNS_WIDE if output is OutputFormat.WIDE else EVENT_COLUMNS


def age(elapsed_ms: int) -> str:
    """kubectl's AGE: ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = max(0, elapsed_ms // 1000)
    for unit, size, below in (("s", 1, 120), ("m", 60, 120 * 60), ("h", 3600, 48 * 3600)):
        if seconds < below:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"
