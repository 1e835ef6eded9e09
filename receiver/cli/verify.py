"""``receiver verify``: explain why a captured (or stored rejected) delivery passes or fails.

It prints what the verifier found (scheme, header set, timestamp and skew, the keys tried
by fingerprint) and the exact reason, never a key, a signature or the body. Exit 0 when
the capture verifies, 1 when it does not (SPEC §10).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from receiver import ops
from receiver.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    SIGNING,
    fail,
    load_settings,
    settings_for,
    source_option,
    with_runtime,
)
from receiver.cli.filters import TimeBound
from receiver.cli.output import print_json
from receiver.ops.captured import CaptureDiagnosis, CaptureError, diagnose_capture, parse_headers
from receiver.redaction import printable, redact_text
from receiver.signing import Diagnosis, Verifier

MAX_CAPTURE_BYTES = 16 * 1024 * 1024

ReadableFile = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.command()
@click.option(
    "--headers",
    "headers_file",
    type=ReadableFile,
    help="The request headers: 'Name: value' lines (raw HTTP, curl -D) or a JSON object.",
)
@click.option("--body", "body_file", type=ReadableFile, help="The exact request body bytes.")
@click.option(
    "--rejected",
    "rejected_id",
    metavar="ID",
    help="Explain a recorded rejection instead (an id from `deliveries list --rejected`).",
)
@click.option(
    "--at",
    "at_ms",
    type=TimeBound(),
    help="Judge the timestamp as of this time (2h ago, or ISO) instead of now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@source_option
def verify(
    headers_file: Path | None,
    body_file: Path | None,
    rejected_id: str | None,
    at_ms: int | None,
    as_json: bool,
    source: str,
) -> None:
    """Diagnose a captured delivery: which scheme and headers it has, the clock skew,
    the keys tried (by fingerprint), and exactly why it passes or fails.

    With --rejected ID, show what was recorded when the receiver turned a delivery away
    (the body and the signature are never kept, so the verdict is the one given then).
    """
    if rejected_id is not None:
        if headers_file is not None or body_file is not None:
            raise click.UsageError("give --rejected ID, or --headers and --body, not both")
        _explain_rejected(rejected_id, as_json)
        return
    if headers_file is None or body_file is None:
        raise click.UsageError("give --headers FILE and --body FILE (or --rejected ID)")
    try:
        headers = parse_headers(_read(headers_file))
    except CaptureError as exc:
        fail(f"--headers {headers_file}: {exc}", EXIT_USAGE)
    body = _read(body_file)
    settings = settings_for(source, needs=(SIGNING,))
    config = settings.sources[source]
    verifier = Verifier(
        config.scheme,
        [key.reveal() for key in config.keys],
        config.tolerance_seconds,
        config.signature_header,
    )
    now = at_ms / 1000 if at_ms is not None else time.time()
    result = diagnose_capture(verifier, headers, body, now)
    if as_json:
        print_json({"source": source, **result.to_json()})
    else:
        print_capture(source, result)
    if not result.valid:
        raise SystemExit(EXIT_FAILURE)


def _read(path: Path) -> bytes:
    if path.stat().st_size > MAX_CAPTURE_BYTES:
        fail(f"{path}: larger than {MAX_CAPTURE_BYTES // (1024 * 1024)} MiB", EXIT_USAGE)
    return path.read_bytes()


def print_capture(source: str, result: CaptureDiagnosis) -> None:
    """The diagnosis as labelled lines, the verdict last."""
    diagnosis = result.diagnosis
    for label, value in _lines(source, diagnosis):
        click.echo(f"{label + ':':<12} {printable(redact_text(value))}")
    if result.at_signed_time is not None:
        again = result.at_signed_time
        if again.code is None:
            click.echo(
                f"{'signature:':<12} matches key {again.matched_key} at the delivery's own "
                "timestamp: the key is right; the sender's clock is off or this is a replay"
            )
        else:
            click.echo(f"{'signature:':<12} {printable(again.reason)} (even at its timestamp)")
    if result.hint:
        click.echo(f"{'hint:':<12} {printable(result.hint)}")
    verdict = (
        f"valid (would be accepted): signed with key {diagnosis.matched_key}"
        if diagnosis.code is None
        else f"{diagnosis.status} {diagnosis.code}: {diagnosis.reason}"
    )
    click.echo(f"{'result:':<12} {printable(verdict)}")


def _lines(source: str, diagnosis: Diagnosis) -> list[tuple[str, str]]:
    lines = [
        (
            "source",
            f"{source} (scheme {diagnosis.scheme}, tolerance {diagnosis.tolerance_seconds} s)",
        ),
        ("headers", diagnosis.header_set or "none of the scheme's headers"),
    ]
    if diagnosis.missing:
        lines.append(("missing", ", ".join(diagnosis.missing)))
    if diagnosis.event_id:
        lines.append(("event id", diagnosis.event_id))
    if diagnosis.timestamp is not None:
        lines.append(
            ("timestamp", f"{diagnosis.timestamp} ({ops.iso_ms(diagnosis.timestamp * 1000)})")
        )
    if diagnosis.skew_seconds is not None:
        lines.append(("skew", _skew(diagnosis.skew_seconds, diagnosis.tolerance_seconds)))
    lines.append(
        ("signatures", f"{diagnosis.signatures} entr{'y' if diagnosis.signatures == 1 else 'ies'}")
    )
    untried = "none (the headers or the timestamp stopped it first)"
    lines.append(("keys tried", ", ".join(diagnosis.keys_tried) or untried))
    return lines


def _skew(skew: int, tolerance: int) -> str:
    """How far the delivery's timestamp is from now (positive: signed in the past)."""
    where = " in the past" if skew > 0 else " in the future" if skew < 0 else ""
    within = "within" if abs(skew) <= tolerance else "OUTSIDE"
    return f"{abs(skew)} s{where} ({within} the {tolerance} s tolerance)"


def _explain_rejected(rejection_id: str, as_json: bool) -> None:
    settings = load_settings()
    try:
        found = with_runtime(
            settings, lambda runtime: ops.get_rejected(runtime.store, rejection_id)
        )
    except ops.FilterError as exc:
        raise click.UsageError(str(exc)) from None
    if found is None:
        fail(f"no rejected delivery {printable(redact_text(rejection_id))!r} (unknown or trimmed)")
    data = found.to_json()
    if as_json:
        print_json(data)
        return
    config = settings.sources.get(found.source)
    skew = (
        _skew(found.skew_seconds, config.tolerance_seconds)
        if found.skew_seconds is not None and config is not None
        else ""
        if found.skew_seconds is None
        else f"{found.skew_seconds} s"
    )
    lines = [
        ("rejected", f"{data['id']} at {data['at']} from {data['client'] or 'an unknown client'}"),
        ("source", f"{data['source']} (scheme {data['scheme'] or 'unknown'})"),
        ("headers", ", ".join(data["headers"]) + "  (names only: values are never kept)"),
        ("event id", data["event_id"]),
        ("skew", skew),
        ("body", f"{data['body_bytes']} bytes (not kept)"),
        ("keys tried", str(data["keys_tried"])),
        ("result", f"{data['status']} {data['code']}: {data['reason']}"),
    ]
    for label, value in lines:
        if value:
            click.echo(f"{label + ':':<12} {printable(str(value))}")
