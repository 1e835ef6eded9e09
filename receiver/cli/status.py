"""``receiver status``: workers, queue, dead letters, rejections, signing keys (item 7)."""

from __future__ import annotations

from typing import Any

import click

from receiver import ops
from receiver.cli.common import load_settings, with_runtime
from receiver.cli.output import print_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Show live workers, the backlog, dead letters, rejections, key use and reconciliation."""
    settings = load_settings()
    found = with_runtime(settings, lambda runtime: ops.status(runtime.store, settings))
    data = found.to_json()
    if as_json:
        print_json(data)
        return
    queue = data["queue"]
    click.echo(f"workers:      {data['live_workers']} live")
    for worker in data["workers"]:
        state = "live" if worker["live"] else "STALE"
        click.echo(
            f"  {worker['consumer']}  {state}  heartbeat {worker['heartbeat_age_seconds']}s ago"
        )
    oldest = queue["oldest_pending_age_seconds"]
    click.echo(
        f"queue:        backlog {queue['backlog']}, in progress {queue['pending']}, "
        f"retrying {queue['retrying']}" + (f", oldest {oldest}s" if oldest is not None else "")
    )
    reasons = ", ".join(f"{code} {count}" for code, count in data["dead_by_reason"].items())
    click.echo(f"dead:         {data['dead']}" + (f" ({reasons})" if reasons else ""))
    click.echo(f"resolved:     {data['resolved']}")
    rejected = ", ".join(f"{code} {n}" for code, n in data["rejected_last_hour"].items())
    click.echo(f"rejected 1h:  {rejected or 'none'}")
    click.echo(f"last accepted: {data['last_accepted_at'] or 'never'}")
    click.echo(_reconcile_line(data["reconcile"]))
    click.echo("signing keys (verified in the last hour):")
    for key in data["signing_keys"]:
        configured = "configured" if key["configured"] else "not configured here"
        click.echo(
            f"  {key['source']} {key['fingerprint']}  {key['verified_last_hour']}"
            f"  last {key['last_verified_at'] or '-'}  ({configured})"
        )


def _reconcile_line(watch: dict[str, Any]) -> str:
    """The watch list in one line: how many, how old, what stops polling (issue 16)."""
    parts = [f"{watch['watched']} watched ({watch['due_now']} due)"]
    if watch["oldest_age_seconds"] is not None:
        parts.append(f"oldest {round(watch['oldest_age_seconds'])}s")
    if watch["next_due_at"]:
        parts.append(f"next check {watch['next_due_at']}")
    if watch["key_refused"]:
        parts.append(f"API KEY REFUSED ({watch['refused_status']}): polling stopped")
    elif watch["paused_seconds"]:
        parts.append(f"paused {watch['paused_seconds']:.0f}s ({watch['pause_reason']})")
    parts.append(f"last polled event {watch['last_polled_at'] or 'never'}")
    return "reconcile:    " + ", ".join(parts)
