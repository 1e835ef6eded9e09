"""``receiver replay``: requeue stored events through the ordering guard, audited (SPEC §7)."""

from __future__ import annotations

import sys
from typing import Any

import click

from receiver import ops
from receiver.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    fail,
    settings_for,
    source_option,
    with_runtime,
)
from receiver.cli.filters import build_filter, filter_options
from receiver.cli.output import EVENT_COLUMNS, event_rows, print_table, progress_bar
from receiver.keys import member_of
from receiver.redaction import redact_text


@click.command()
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most this many (newest).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most N events/s.")
@click.option("--yes", is_flag=True, help="Replay a filter without asking.")
@click.option("--actor", help="Who replays, for the audit log (default: the OS user).")
@source_option
def replay(
    event_ids: tuple[str, ...],
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    yes: bool,
    actor: str | None,
    source: str,
) -> None:
    """Replay events by id, or every event a filter selects, through the ordering guard.

    Replays are audited (who, when, what, how many); `events audit` lists them.
    """
    event_filter = build_filter(source, status, event_type, record_key, since, until, limit)
    if event_ids and event_filter.selects:
        raise click.UsageError("give event ids or a filter (--status/--type/...), not both")
    if not event_ids and not event_filter.selects:
        raise click.UsageError(
            "give event ids or a filter (--status/--type/--record/--since/--until)"
        )
    bulk = not event_ids
    interactive = sys.stdin.isatty()
    if bulk and not dry_run and not yes and not interactive:
        fail("a bulk replay needs --yes when stdin is not a terminal", EXIT_USAGE)
    settings = settings_for(source)
    who = actor or ops.current_user()

    async def work(runtime: Any) -> tuple[ops.ReplayResult | None, list[str], list[Any]]:
        store = runtime.store
        if bulk:
            selected = await ops.list_events(store, event_filter)
            members = [event.member for event in selected]
        else:
            selected = []
            members = [member_of(source, event_id) for event_id in dict.fromkeys(event_ids)]
        entry_filter = ops.audit_filter(event_filter if bulk else None, list(event_ids))
        result = ops.ReplayResult(total=len(members))
        try:
            if dry_run:
                present = await ops.existing(store, members)
                result.missing = [m for m, ok in zip(members, present, strict=True) if not ok]
                result.completed = True
                return result, members, selected
            # Prompting blocks the loop; nothing else runs in this process meanwhile.
            if (
                bulk
                and not yes
                and members
                and not click.confirm(f"Replay {len(members)} events from {source}?")
            ):
                return None, members, selected
            with progress_bar("replaying", len(members)) as progress:
                await ops.replay(
                    store, members, by=f"replay:{who}", rate=rate, progress=progress, result=result
                )
            return result, members, selected
        finally:
            # Audited even when interrupted or a dry run, with what was actually done.
            await ops.write_audit(
                runtime.client,
                ops.AuditEntry(
                    actor=who,
                    source=source,
                    filter=entry_filter,
                    ids=len(event_ids),
                    matched=len(members),
                    queued=result.queued,
                    missing=len(result.missing),
                    dry_run=dry_run,
                    completed=result.completed,
                ),
            )

    result, members, selected = with_runtime(settings, work)
    if result is None:
        click.echo("aborted: nothing replayed", err=True)
        raise SystemExit(EXIT_FAILURE)
    missing = set(result.missing)
    if dry_run:
        if bulk:
            print_table(EVENT_COLUMNS, event_rows(selected))
        else:
            for member in members:
                mark = "missing" if member in missing else "would replay"
                click.echo(f"{redact_text(member.partition('|')[2])}  {mark}")
        click.echo(
            f"dry run: {len(members) - len(missing)} events would be replayed "
            f"({len(missing)} missing); nothing was changed"
        )
    else:
        for member in result.missing:
            click.echo(
                f"missing (unknown or expired): {redact_text(member.partition('|')[2])}", err=True
            )
        click.echo(
            f"replayed {result.queued} of {len(members)} events as replay:{redact_text(who)}"
            f" ({len(missing)} missing)"
        )
    if missing and not bulk:
        raise SystemExit(EXIT_FAILURE)
