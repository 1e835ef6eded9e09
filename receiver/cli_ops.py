"""Operator commands: ``events``, ``replay``, ``send-test``, ``config check``, ``sink init``,
``gen-key`` (SPEC §7, §9). Thin: parse, call ``receiver.ops``, print.

Without ``--raw`` everything printed passes the log redaction. Tables are rich on a
terminal and plain text otherwise; ``--json`` output is machine-readable. Exit codes are
those of ``receiver.cli``: 0 success, 1 failure, 2 usage.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import orjson

from receiver import ops
from receiver.bodies import BodyDecryptError
from receiver.cli_support import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    load_settings,
    run_async,
)
from receiver.keys import all_shards, member_of
from receiver.models import EventState
from receiver.redaction import redact_text, redact_value
from receiver.redis_client import REDIS_ERRORS
from receiver.settings import DEFAULT_SOURCE, Settings
from receiver.store import now_ms

T = TypeVar("T")
RAW_WARNING = (
    "warning: printing the raw stored body; it may hold API keys and signed URLs. "
    "Do not paste it into tickets or chats."
)
LAST_ERROR_WIDTH = 60


# -- shared plumbing ---------------------------------------------------------------------


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


source_option = click.option(
    "--source", default=DEFAULT_SOURCE, show_default=True, help="The configured source."
)


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
) -> ops.EventFilter:
    try:
        return ops.EventFilter(
            source=source,
            state=EventState(status.lower()) if status else None,
            event_type=event_type,
            record_key=record_key,
            since_ms=since,
            until_ms=until,
            limit=limit,
        )
    except ops.FilterError as exc:
        raise click.UsageError(str(exc)) from None


def settings_for(source: str) -> Settings:
    """Settings (exit 1 on a bad configuration) and a known ``--source`` (exit 2)."""
    settings = load_settings()
    if source not in settings.sources:
        known = ", ".join(sorted(settings.sources))
        fail(f"unknown source {source!r} (configured: {known})", EXIT_USAGE)
    return settings


def with_runtime(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(runtime)`` against the configured (or embedded) Redis, then close it.

    Works beside a running ``serve``: the embedded Redis it started is reused (SPEC §9).
    """
    from receiver.runtime import Runtime

    async def run() -> T:
        runtime = await Runtime.open(settings)
        try:
            return await work(runtime)
        finally:
            await runtime.aclose()

    try:
        return run_async(run)
    except REDIS_ERRORS as exc:
        fail(f"redis: {type(exc).__name__}: {redact_text(str(exc))[:200]}")


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


# -- events ------------------------------------------------------------------------------


@click.group()
def events() -> None:
    """List, inspect and re-encrypt stored events; read the replay audit log."""


@events.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@source_option
def list_command(
    status: str | None,
    event_type: str | None,
    record_key: str | None,
    since: int | None,
    until: int | None,
    limit: int,
    as_json: bool,
    source: str,
) -> None:
    """List stored events, newest first."""
    event_filter = build_filter(source, status, event_type, record_key, since, until, limit)
    settings = settings_for(source)
    found = with_runtime(settings, lambda runtime: ops.list_events(runtime.store, event_filter))
    if as_json:
        print_json([redact_value(ops.summary(event)) for event in found])
        return
    print_table(EVENT_COLUMNS, event_rows(found))
    if not found:
        click.echo("no events match", err=True)


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--raw", is_flag=True, help="Print the stored body decrypted, unredacted.")
@source_option
def show_command(event_id: str, as_json: bool, raw: bool, source: str) -> None:
    """Show one event: state, history, attempts, last error and its (redacted) body."""
    settings = settings_for(source)
    detail = with_runtime(
        settings,
        lambda runtime: ops.show_event(runtime.store, runtime.cipher, source, event_id),
    )
    if detail is None:
        fail(f"no event {redact_text(event_id)!r} from source {source!r} (unknown or expired)")
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
        _print_detail(detail.to_json())


def _print_detail(data: dict[str, Any]) -> None:
    for name in (
        "event_id", "source", "state", "type", "record_key", "received_at", "signed_at",
        "attempts", "last_error", "content_type", "encrypted", "body_sha256", "body_error",
    ):  # fmt: skip
        if name in data:
            click.echo(f"{name + ':':<14}{data[name] if data[name] is not None else ''}")
    click.echo("history:")
    for entry in data["history"]:
        extra = " ".join(
            f"{key}={value}"
            for key, value in entry.items()
            if key not in ("at", "at_ms", "state", "by")
        )
        line = f"  {entry['at']}  {entry.get('state', ''):<8} by {entry.get('by', '')} {extra}"
        click.echo(line.rstrip())
    click.echo("body (redacted; --raw for the stored bytes):")
    body = data.get("body")
    if isinstance(body, str):
        click.echo(body)
    elif body is not None:
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


@events.command("audit")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def audit_command(limit: int, as_json: bool) -> None:
    """List audited replays, newest first."""
    settings = load_settings()
    entries = with_runtime(settings, lambda runtime: ops.list_audit(runtime.client, limit))
    if as_json:
        print_json([redact_value(entry.to_json()) for entry in entries])
        return
    rows = [
        [
            data["at"],
            data["actor"],
            data["source"],
            orjson.dumps(data["filter"]).decode(),
            str(data["matched"]),
            str(data["queued"]),
            str(data["missing"]),
            "yes" if data["dry_run"] else "no",
        ]
        for data in (redact_value(entry.to_json()) for entry in entries)
    ]
    print_table(AUDIT_COLUMNS, rows)
    if not rows:
        click.echo("no audited replays", err=True)


AUDIT_COLUMNS = ("at", "actor", "source", "filter", "matched", "queued", "missing", "dry_run")


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
        total = sum(
            [
                int(await runtime.client.zcard(shard.index))
                for shard in all_shards(runtime.store.shards)
            ]
        )
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


# -- replay ------------------------------------------------------------------------------


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


# -- send-test ---------------------------------------------------------------------------


@click.command("send-test")
@click.option("--url", help="Where to POST [default: http://127.0.0.1:8000/webhooks/SOURCE].")
@click.option(
    "--status", type=click.Choice(["succeeded", "failed"]), default="succeeded", show_default=True
)
@click.option("--task-id", help="Task id of the generation [default: a fresh one].")
@click.option("--secret", help="Sign with this secret instead of the configured one.")
@source_option
def send_test(
    url: str | None, status: str, task_id: str | None, secret: str | None, source: str
) -> None:
    """POST a realistic, signed Rivya event to a running receiver."""
    import httpx

    settings = settings_for(source)
    target = url or f"http://127.0.0.1:8000/webhooks/{source}"
    try:
        delivery = ops.build_delivery(
            settings.sources[source], status=status, task_id=task_id, secret=secret
        )
    except ops.NoSigningSecret as exc:
        fail(str(exc), EXIT_USAGE)
    click.echo(f"POST {redact_text(target)}  event {delivery.event_id}  task {delivery.task_id}")
    try:
        code, answer = run_async(lambda: ops.post_delivery(target, delivery))
    except httpx.HTTPError as exc:
        fail(f"cannot reach {redact_text(target)}: {type(exc).__name__}: {redact_text(str(exc))}")
    shown = orjson.dumps(redact_value(answer)).decode()
    click.echo(f"HTTP {code} {shown}")
    raise SystemExit(EXIT_OK if 200 <= code < 300 else EXIT_FAILURE)


# -- config, sink, keys ------------------------------------------------------------------


@click.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("check")
def config_check() -> None:
    """Validate the configuration, print it (secrets masked), and probe Redis and the sink."""
    settings = load_settings()
    report = run_async(lambda: ops.check_config(settings))
    click.echo("config: valid")
    for name, value in report.settings:
        click.echo(f"  {name + ':':<20}{value}")
    for check in report.checks:
        click.echo(f"{check.name}: {check.detail}")
    for warning in report.warnings:
        click.echo(f"WARNING: {warning}")
    if not report.ok:
        failed = ", ".join(check.name for check in report.checks if not check.ok)
        fail(f"config check failed: {failed}")


@click.group()
def sink() -> None:
    """Manage the product-record sink."""


@sink.command("init")
def sink_init() -> None:
    """Create the sink's tables (idempotent)."""
    settings = load_settings()
    try:
        label = run_async(lambda: ops.init_sink(settings))
    except Exception as exc:  # any sink (third-party ones too) may raise anything: report it
        fail(f"sink: setup failed ({type(exc).__name__}: {redact_text(str(exc))[:200]})")
    click.echo(f"sink ready: {label}")


@click.command("gen-key")
def gen_key() -> None:
    """Print a new Fernet key for RECEIVER_ENCRYPTION_KEYS."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


# Annotated, so ``receiver.cli`` (which imports this module at its end) type-checks.
COMMANDS: tuple[click.Command, ...] = (events, replay, send_test, config, sink, gen_key)
