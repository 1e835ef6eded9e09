"""The event filter options shared by ``events list``, ``replay`` and ``events resolve``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from receiver import ops
from receiver.models import EventState, ReasonCode
from receiver.store import now_ms


class TimeBound(click.ParamType):  # type: ignore[type-arg]
    """``2h``/``30m``/``7d`` ago or an ISO 8601 time, as epoch milliseconds."""

    name = "DURATION|TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return ops.parse_time_bound(str(value), now_ms(), f"--{param.name}" if param else "")
        except ops.FilterError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)


def filter_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The event filter shared by ``events list`` and ``replay``."""
    options = [
        click.option(
            "--status",
            type=click.Choice([state.value for state in EventState], case_sensitive=False),
            help="Only events in this state.",
        ),
        click.option("--type", "event_type", help="Event type; shell patterns allowed."),
        click.option("--record", "record_key", metavar="KEY", help="Only this record key."),
        click.option(
            "--error",
            "reason_code",
            type=click.Choice([code.value for code in ReasonCode]),
            help="Only dead events with this reason code.",
        ),
        click.option("--since", type=TimeBound(), help="Received after: 2h, 30m, 7d or ISO."),
        click.option("--until", type=TimeBound(), help="Received before: 2h, 30m, 7d or ISO."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_filter(
    source: str,
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
    reason_code: str | None = None,
) -> ops.EventFilter:
    try:
        return ops.EventFilter(
            source=source,
            state=EventState(status.lower()) if status else None,
            event_type=event_type,
            record_key=record_key,
            reason_code=reason_code,
            since_ms=since,
            until_ms=until,
            limit=limit,
        )
    except ops.FilterError as exc:
        raise click.UsageError(str(exc)) from None
