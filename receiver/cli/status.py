"""``receiver status``: workers, queue, dead letters, rejections, signing keys (item 7).

A summary first, then the workers (live or STALE by heartbeat age) and the signing keys
by fingerprint as tables, so a glance tells whether events flow and which key is in use.
"""

from __future__ import annotations

from typing import Any

import click

from receiver import ops
from receiver.cli.common import load_settings, with_runtime
from receiver.cli.output import Column, print_json, print_table
from receiver.redaction import printable

WORKER_COLUMNS = (
    Column("consumer", "WORKER", whole=True, required=True),
    Column(
        "state", "STATE", whole=True, required=True, styles={"live": "green", "STALE": "bold red"}
    ),
    Column("heartbeat", "HEARTBEAT", whole=True, keep=3),
    Column("in_flight", "IN_FLIGHT", keep=2),
    Column("concurrency", "CONCURRENCY", keep=1),
    Column("host", "HOST", keep=1),
    Column("pid", "PID", keep=1),
)
KEY_COLUMNS = (
    Column("source", "SOURCE", whole=True, keep=3),
    Column("fingerprint", "KEY", whole=True, required=True),
    Column("verified_last_hour", "VERIFIED_1H", whole=True, required=True),
    Column("last_verified_at", "LAST_VERIFIED", keep=2),
    Column("configured", "CONFIGURED", keep=1),
)


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
    print_status(data)


def print_status(data: dict[str, Any]) -> None:
    def line(label: str, value: str) -> None:
        click.echo(f"{label + ':':<15}{printable(value)}")

    def counts(by_code: dict[str, int]) -> str:
        return ", ".join(f"{code} {count:,}" for code, count in by_code.items())

    queue = data["queue"]
    workers = data["workers"]
    line("workers", f"{data['live_workers']} live of {len(workers)} registered")
    oldest = queue["oldest_pending_age_seconds"]
    line(
        "queue",
        f"backlog {queue['backlog']:,}, in progress {queue['pending']:,}, "
        f"retrying {queue['retrying']:,}"
        + (f", oldest pending {oldest:.0f} s" if oldest is not None else ""),
    )
    reasons = counts(data["dead_by_reason"])
    approximate = "" if data["dead_by_reason_exact"] else ", by reason from a sample"
    line("dead", f"{data['dead']:,}" + (f" ({reasons}{approximate})" if reasons else ""))
    line("resolved", f"{data['resolved']:,}")
    line("rejected 1h", counts(data["rejected_last_hour"]) or "none")
    line("last accepted", data["last_accepted_at"] or "never (within the retention)")
    line("reconcile", _reconcile_line(data["reconcile"]))
    if workers:
        click.echo()
        print_table(
            WORKER_COLUMNS,
            [
                {
                    **{key: "" if value is None else str(value) for key, value in worker.items()},
                    "state": "live" if worker["live"] else "STALE",
                    "heartbeat": f"{worker['heartbeat_age_seconds']:.0f}s ago",
                }
                for worker in workers
            ],
        )
    click.echo()
    if not data["signing_keys"]:
        click.echo("signing keys: none configured here, none seen verifying in the last hour")
        return
    print_table(
        KEY_COLUMNS,
        [
            {
                **{key: "" if value is None else str(value) for key, value in key.items()},
                "last_verified_at": key["last_verified_at"] or "-",
                "configured": "yes" if key["configured"] else "not here",
            }
            for key in data["signing_keys"]
        ],
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
    return ", ".join(parts)
