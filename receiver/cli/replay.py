"""``receiver replay``: requeue stored events through the ordering guard, audited (SPEC §7).

The work is ``ops.plan_replay`` and ``ops.execute_replay``; this command parses, asks,
and prints what happened: how many were queued, and with ``--wait`` where they ended up.
"""

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
from receiver.cli.output import OutputFormat, print_events, print_json, progress_bar, shown_id
from receiver.redaction import printable, redact_text


@click.command()
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), help="Replay at most this many (newest).")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="At most N events/s.")
@click.option("--wait", is_flag=True, help="Follow the queued events to their outcome.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds --wait follows them at most.",
)
@click.option("--yes", is_flag=True, help="Replay a filter without asking.")
@click.option("--actor", help="Who replays, for the audit log (default: RECEIVER_ACTOR, OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@source_option
def replay(
    event_ids: tuple[str, ...],
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    reason_code: str | None,
    since: int | None,
    until: int | None,
    limit: int | None,
    dry_run: bool,
    rate: float | None,
    wait: bool,
    wait_timeout: float,
    yes: bool,
    actor: str | None,
    as_json: bool,
    source: str,
) -> None:
    """Replay events by id, or every event a filter selects, through the ordering guard.

    Replays are audited (who, when, what, how many, how it ended); `events audit` lists them.
    """
    event_filter = build_filter(
        source, status, event_type, record_key, since, until, limit, reason_code
    )
    try:
        selection = ops.Selection(source, tuple(event_ids), event_filter)
    except ops.FilterError as exc:
        raise click.UsageError(str(exc)) from None
    interactive = sys.stdin.isatty()
    if selection.bulk and not dry_run and not yes and not interactive:
        fail("a bulk replay needs --yes when stdin is not a terminal", EXIT_USAGE)
    settings = settings_for(source)
    who = ops.resolve_actor(actor, settings)
    wait_seconds = wait_timeout if wait else None

    async def work(runtime: Any) -> tuple[ops.ReplayPlan, ops.ReplayResult | None, bool]:
        store = runtime.store
        plan = await ops.plan_replay(store, selection)
        live = bool(await ops.live_workers(store))
        # Prompting blocks the loop; nothing else runs in this process meanwhile.
        if (
            selection.bulk
            and not dry_run
            and not yes
            and plan.members
            and not click.confirm(f"Replay {plan.count} events from {source}?")
        ):
            return plan, None, live
        with progress_bar("replaying", 0 if dry_run else len(plan.members)) as progress:
            result = await ops.execute_replay(
                store,
                plan,
                actor=who,
                rate=rate,
                progress=progress,
                dry_run=dry_run,
                wait_seconds=wait_seconds if live else None,
            )
        return plan, result, live

    plan, result, live = with_runtime(settings, work)
    if result is None:
        click.echo("aborted: nothing replayed", err=True)
        raise SystemExit(EXIT_FAILURE)
    missing = set(result.missing)
    if not dry_run and not live:
        click.echo(
            "warning: no live worker is registered: the events wait in the queue until a "
            "worker runs (receiver worker, or serve without --no-worker)",
            err=True,
        )
    if as_json:
        print_json({**result.to_json(), "live_workers": live})
    elif dry_run:
        if selection.bulk:
            print_events(plan.events, OutputFormat.TABLE)
        else:
            for member in plan.members:
                mark = "missing" if member in missing else "would replay"
                click.echo(f"{shown_id(member)}  {mark}")
        click.echo(
            f"dry run: {plan.count} events would be queued "
            f"({len(missing)} missing); nothing was changed"
        )
    else:
        for member in result.missing:
            click.echo(f"missing (unknown or expired): {shown_id(member)}", err=True)
        click.echo(
            f"queued {result.queued} of {len(plan.members)} events for replay as "
            f"replay:{printable(redact_text(who))} ({len(missing)} missing)"
        )
        if result.outcomes is not None:
            outcomes = result.outcomes
            click.echo(
                f"outcomes: {outcomes.applied} applied, {outcomes.stale} stale, "
                f"{outcomes.dead} dead, {outcomes.pending} still pending"
                + (" (timed out waiting)" if outcomes.timed_out else "")
            )
        elif wait_seconds is not None:
            click.echo("not waiting for outcomes: no live worker", err=True)
    if missing and not selection.bulk:
        raise SystemExit(EXIT_FAILURE)
    if result.outcomes is not None and (result.outcomes.dead or result.outcomes.timed_out):
        raise SystemExit(EXIT_FAILURE)
