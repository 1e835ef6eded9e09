"""``receiver send-test``: POST a realistic, signed Rivya event to a running receiver."""

from __future__ import annotations

import click
import orjson

from receiver import ops
from receiver.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    fail,
    run_async,
    settings_for,
    source_option,
)
from receiver.redaction import redact_text, redact_value


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
    if source not in settings.sources:  # rivya-poll: events only polling makes, never signed
        fail(f"source {source!r} takes no webhooks: it has no signing keys", EXIT_USAGE)
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
