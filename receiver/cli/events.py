"""``receiver events``: list, show, audit and re-encrypt stored events (SPEC §7, §9).

Without ``--raw`` everything printed passes the log redaction.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import orjson

from receiver import ops
from receiver.bodies import BodyDecryptError
from receiver.cli.common import (
    EXIT_USAGE,
    fail,
    load_settings,
    settings_for,
    source_option,
    with_runtime,
)
from receiver.cli.filters import build_filter, filter_options
from receiver.cli.follow import follow
from receiver.cli.output import (
    Column,
    OutputFormat,
    TableStream,
    event_columns,
    event_rows,
    notice,
    output_options,
    print_events,
    print_json,
    print_ndjson,
    print_table,
    progress_bar,
    shown_id,
)
from receiver.redaction import printable, redact_text, redact_value
from receiver.settings import POLL_SOURCE, Settings
from receiver.store import StoredEvent

POLL_ORIGIN = "polled from Rivya's status API (reconciliation), not a signed webhook"
RAW_WARNING = (
    "warning: printing the raw stored body; it may hold API keys and signed URLs. "
    "Do not paste it into tickets or chats."
)


@click.group()
def events() -> None:
    """List, inspect and re-encrypt stored events; read the replay audit log."""


@events.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (and state changes).")
@output_options
@source_option
def list_command(
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    reason_code: str | None,
    since: int | None,
    until: int | None,
    limit: int,
    follow: bool,
    output: OutputFormat,
    source: str,
) -> None:
    """List stored events, newest first (with --follow: oldest first, then as they come).

    A list cut short by --limit says so on stderr ("showing 50 of 1,234").
    """
    if follow and until is not None:
        raise click.UsageError("--follow prints events as they arrive: drop --until")
    event_filter = build_filter(
        source, status, event_type, record_key, since, until, limit, reason_code
    )
    settings = settings_for(source)
    if follow:
        _follow(settings, event_filter, output)
        return
    page = with_runtime(settings, lambda runtime: ops.list_events(runtime.store, event_filter))
    print_events(page.events, output)
    if not page.events and output is not OutputFormat.JSON:
        notice("no events match")
    elif page.next_cursor is not None:
        of = f" of {page.total:,}" if page.total is not None else "; more match"
        notice(f"showing {len(page.events):,}{of} (raise --limit or narrow the filter)")


def _follow(settings: Settings, event_filter: ops.EventFilter, output: OutputFormat) -> None:
    stream: TableStream | None = None

    def show(found: Sequence[StoredEvent]) -> None:
        nonlocal stream
        if output is OutputFormat.JSON:
            for event in found:
                print_ndjson(ops.summary_json(event))
            return
        if output is OutputFormat.NAME:
            print_events(found, output)
            sys.stdout.flush()
            return
        rows = event_rows(found)
        if stream is None:
            stream = TableStream(event_columns(output), rows)
        stream.print(rows)

    if sys.stderr.isatty():
        notice("following new events; Ctrl-C to stop")
    try:
        with_runtime(settings, lambda runtime: follow(runtime.store, event_filter, show))
    except BrokenPipeError:
        # The reader went away (``| head``): nothing left to print to, and nothing wrong.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--raw", is_flag=True, help="Print the stored body decrypted, unredacted.")
@source_option
def show_command(event_id: str, as_json: bool, raw: bool, source: str) -> None:
    """Show one event: state, timeline of attempts, last error and its (redacted) body."""
    settings = settings_for(source)
    detail = with_runtime(
        settings,
        lambda runtime: ops.show_event(runtime.store, runtime.cipher, source, event_id),
    )
    if detail is None:
        fail(
            f"no event {printable(redact_text(event_id))!r} from source {source!r} "
            "(unknown or expired)"
        )
    if raw:
        click.echo(RAW_WARNING, err=True)
        if detail.body is None:
            fail(f"cannot open the body: {detail.body_error}")
    if as_json:
        print_json(detail.to_json(raw=raw))
    elif raw:
        assert detail.body is not None
        sys.stdout.buffer.write(detail.body)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    else:
        print_detail(detail.to_json())


DETAIL_FIELDS = (
    "event_id", "source", "state", "type", "record_key", "received_at", "signed_at",
    "signing_key", "attempts", "reason_code", "last_error", "resolved_reason", "resolved_by",
    "resolved_at", "content_type", "encrypted", "body_sha256", "body_error",
)  # fmt: skip


def print_detail(data: dict[str, Any]) -> None:
    """``events show`` as text: fields, the timeline, the body; nothing printed raw."""
    for name in DETAIL_FIELDS:
        if data.get(name) not in (None, ""):
            click.echo(f"{name + ':':<16}{printable(str(data[name]))}")
    if data.get("source") == POLL_SOURCE:
        click.echo(f"{'origin:':<16}{POLL_ORIGIN}")
    click.echo("timeline:")
    for entry in data["history"]:
        click.echo("  " + printable(timeline_line(entry)))
        attempt = entry.get("attempt")
        if isinstance(attempt, dict):
            click.echo("      attempt: " + printable(attempt_text(attempt)))
    click.echo("body (redacted; --raw for the stored bytes):")
    body = data.get("body")
    if isinstance(body, str):
        click.echo(printable(body, multiline=True))
    elif body is not None:
        text = orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()
        click.echo(printable(text, multiline=True))


def timeline_line(entry: dict[str, Any]) -> str:
    """One history entry: when, the state it led to, who, then what else it recorded."""
    parts = [str(entry.get("at", "")), f"{entry.get('state', ''):<8}", f"by {entry.get('by', '')}"]
    parts += [
        f"{key}={value}"
        for key, value in entry.items()
        if key not in ("at", "at_ms", "state", "by", "attempt")
    ]
    return " ".join(part for part in parts if part).rstrip()


def attempt_text(attempt: dict[str, Any]) -> str:
    """One sink call: outcome (and HTTP status), duration, a stale record's held state, the
    start of the sink's answer."""
    parts = [str(attempt.get("outcome", ""))]
    if attempt.get("status") is not None:
        parts[0] += f" status={attempt['status']}"
    if isinstance(attempt.get("duration_ms"), int | float):
        parts.append(f"{attempt['duration_ms']:.1f} ms")
    held = attempt.get("held")
    if isinstance(held, dict):
        parts.append(
            f"record held {held.get('status')} of {held.get('source_updated_at')} "
            f"(event {held.get('last_event_id')})"
        )
    if attempt.get("answer"):
        parts.append(f"answer: {attempt['answer']}")
    return "  ".join(parts)


@events.command("audit")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@output_options
def audit_command(limit: int, output: OutputFormat) -> None:
    """List audited replays and resolves, newest first (-o wide adds the resolve reason
    and the outcomes a replay --wait saw)."""
    settings = load_settings()
    entries = with_runtime(settings, lambda runtime: ops.list_audit(runtime.store, limit))
    audited = [redact_value(entry.to_json()) for entry in entries]
    if output is OutputFormat.JSON:
        print_json(audited)
        return
    if output is OutputFormat.NAME:
        for data in audited:
            click.echo(printable(str(data["id"])))
    else:
        rows = [
            {
                **{key: "" if value is None else str(value) for key, value in data.items()},
                "filter": orjson.dumps(data["filter"]).decode(),
                "dry_run": "yes" if data["dry_run"] else "no",
                "completed": "yes" if data["completed"] else "INTERRUPTED",
                "outcomes": " ".join(f"{k}={v}" for k, v in (data.get("outcomes") or {}).items()),
            }
            for data in audited
        ]
        columns = AUDIT_COLUMNS_WIDE if output is OutputFormat.WIDE else AUDIT_COLUMNS
        print_table(columns, rows)
    if not audited:
        notice("no audited replays or resolves")


AUDIT_COLUMNS = (
    Column("at", "AT", whole=True, required=True),
    Column("action", "ACTION", whole=True, required=True),
    Column("actor", "ACTOR", keep=2),
    Column("source", "SOURCE", keep=1),
    Column("filter", "FILTER", keep=0),
    Column("matched", "MATCHED", whole=True, keep=3),
    Column("queued", "QUEUED", whole=True, keep=3),
    Column("resolved", "RESOLVED", whole=True, keep=3),
    Column("missing", "MISSING", whole=True, keep=2),
    Column("dry_run", "DRY_RUN", whole=True, keep=2),
    Column("completed", "COMPLETED", whole=True, keep=2),
)
AUDIT_COLUMNS_WIDE = (
    Column("id", "ID", whole=True, required=True),
    *AUDIT_COLUMNS,
    Column("outcomes", "OUTCOMES", keep=1),
    Column("reason", "REASON", keep=1),
)


@events.command("reencrypt")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reencrypt_command(yes: bool) -> None:
    """Re-encrypt every stored body under the first RECEIVER_ENCRYPTION_KEYS key.

    Run it after putting a new key first; remove the old key only once this succeeded.
    """
    settings = load_settings()
    if not settings.encryption_keys:
        fail("RECEIVER_ENCRYPTION_KEYS is not set: nothing to encrypt with")
    if not yes:
        if not sys.stdin.isatty():
            fail(
                "re-encrypting every stored body needs --yes when stdin is not a terminal",
                EXIT_USAGE,
            )
        click.confirm("Re-encrypt every stored body under the first key?", abort=True)

    async def work(runtime: Any) -> ops.ReencryptResult:
        total = await ops.count_stored(runtime.store)
        with progress_bar("re-encrypting", total) as progress:
            return await ops.reencrypt(runtime.store, runtime.cipher, progress)

    try:
        result = with_runtime(settings, work)
    except BodyDecryptError as exc:
        fail(str(exc))
    click.echo(
        f"re-encrypted {result.rotated} bodies; {result.gone} expired meanwhile; "
        f"{len(result.failed)} could not be opened"
    )
    if result.failed:
        for member in result.failed[:20]:
            click.echo(f"  cannot open: {redact_text(member)}", err=True)
        fail("some bodies are under a key that is no longer configured")


@events.command("resolve")
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@filter_options
@click.option("--reason", required=True, help="Why these events need no replay (audited).")
@click.option("--limit", type=click.IntRange(min=1), help="Resolve at most this many (newest).")
@click.option("--dry-run", is_flag=True, help="Show what would be resolved; change nothing.")
@click.option("--yes", is_flag=True, help="Resolve a filter without asking.")
@click.option("--actor", help="Who resolves, for the audit log (default: RECEIVER_ACTOR, OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@source_option
def resolve_command(
    event_ids: tuple[str, ...],
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    reason_code: str | None,
    since: int | None,
    until: int | None,
    reason: str,
    limit: int | None,
    dry_run: bool,
    yes: bool,
    actor: str | None,
    as_json: bool,
    source: str,
) -> None:
    """Mark dead events resolved: kept and showable, no longer dead, never bulk-replayed.

    By ids, or every dead event a filter selects (--error unmappable, --type, ...).
    """
    event_filter = build_filter(
        source, status, event_type, record_key, since, until, limit, reason_code
    )
    try:
        selection = ops.Selection(source, tuple(event_ids), event_filter)
        ops.check_reason(reason)
    except ops.FilterError as exc:
        raise click.UsageError(str(exc)) from None
    if selection.bulk and not dry_run and not yes and not sys.stdin.isatty():
        fail("a bulk resolve needs --yes when stdin is not a terminal", EXIT_USAGE)
    settings = settings_for(source)
    who = ops.resolve_actor(actor, settings)
    result = with_runtime(
        settings,
        lambda runtime: ops.resolve(
            runtime.store, selection, reason=reason, actor=who, dry_run=dry_run
        ),
    )
    if as_json:
        print_json(result.to_json())
    elif dry_run:
        would = result.matched - len(result.not_dead) - len(result.missing)
        click.echo(f"dry run: {would} dead events would be resolved; nothing was changed")
    else:
        actor = printable(redact_text(who))
        click.echo(
            f"resolved {result.resolved} of {result.matched} events as {actor} "
            f"({len(result.not_dead)} not dead, {len(result.missing)} missing)"
        )
    for member in result.not_dead:
        click.echo(f"not dead, left alone: {shown_id(member)}", err=True)
    for member in result.missing:
        click.echo(f"missing (unknown or expired): {shown_id(member)}", err=True)
    if (result.not_dead or result.missing) and not selection.bulk:
        raise SystemExit(1)
