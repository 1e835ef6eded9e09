"""What the CLI prints: tables that keep ids whole, -o formats, and output that a hostile
signed event cannot use against the operator's terminal (issue 14 item 10, issue 12 item 8).

Real processes against a real Redis and a real ``serve``; terminal tests put the CLI's
stdout on a pseudo-terminal so rich takes its terminal path.
"""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis

from receiver.cli.output import Column, fit_widths
from receiver.signing import Scheme, key_fingerprint
from tests.conftest import TEST_SECRET
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
from tests.servers import ServiceProcess
from tests.terminal import run_on_terminal

OSC_TITLE = "\x1b]0;pwned\x07"
MARKUP_TYPE = "generation.[bold red]boom[/] [link=https://evil.example]x[/link] [/]"
HOSTILE_TASK = f"task_{OSC_TITLE}\r\u202eevil"
DEPTH = 300


def cli(env: dict[str, str], *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env={**env, **extra_env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def long_id(prefix: str) -> str:
    """An id as long as real ones (Svix message ids are 31 characters)."""
    return f"{prefix}_{uuid.uuid4().hex[:26]}"


@dataclass(frozen=True)
class Seeded:
    env: dict[str, str]
    ids: dict[str, str]
    tasks: dict[str, str]
    url: str


def deliver(url: str, body: bytes, event_id: str) -> None:
    response = httpx.post(url, content=body, headers=signed_headers(body, event_id), timeout=10)
    assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Seeded]:
    """A service and four stored events: two plain, one with markup and terminal escapes
    in its type, record key and body, one whose body nests 300 levels."""
    workdir = tmp_path_factory.mktemp("output")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = base_env(workdir, redis_url, RECEIVER_LOG_LEVEL="warning")
    with ServiceProcess(env, workdir / "serve.log") as service:
        url = f"{service.url}/webhooks/rivya"
        ids = {name: long_id("msg") for name in ("plain", "failed", "hostile", "deep")}
        tasks = {"plain": long_id("task"), "failed": long_id("task"), "hostile": HOSTILE_TASK}
        deliver(url, orjson.dumps(envelope(generation(tasks["plain"]), ids["plain"])), ids["plain"])
        failed = envelope(generation(tasks["failed"], status="failed"), ids["failed"])
        deliver(url, orjson.dumps(failed), ids["failed"])
        hostile = envelope(
            generation(HOSTILE_TASK, note=f"line\rover{OSC_TITLE}\x1b[2J\x9b31m"), ids["hostile"]
        )
        hostile["type"] = MARKUP_TYPE
        deliver(url, orjson.dumps(hostile), ids["hostile"])
        deep = b'{"id":"%s","type":"generation.succeeded","data":%s%s}' % (
            ids["deep"].encode(),
            b"[" * DEPTH,
            b"]" * DEPTH,
        )
        deliver(url, deep, ids["deep"])

        def settled() -> bool:
            listed = orjson.loads(cli(env, "events", "list", "--json").stdout or b"[]")
            return len(listed) == 4 and all(item["state"] != "pending" for item in listed)

        eventually(settled, what="the four events to be applied or dead")
        yield Seeded(env, ids, tasks, url)
    client.close()


# The events with ordinary ids (the hostile one's escaped record key alone is 36 cells).
ORDINARY = ("--type", "generation.[sf]*")


def visible_lines(text: str) -> list[str]:
    """Lines as the terminal shows them: SGR colour sequences removed."""
    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]


class TestTables:
    def test_plain_table_fits_columns_and_keeps_ids_whole(self, seeded: Seeded) -> None:
        """With COLUMNS=80 every line fits 80 cells, one per event, ids and keys whole."""
        result = cli(seeded.env, "events", "list", *ORDINARY, COLUMNS="80")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 4  # header + three events: nothing wrapped
        assert all(len(line) <= 80 for line in lines), lines
        assert lines[0].split()[:2] == ["EVENT_ID", "STATE"]
        for name in ("plain", "failed"):
            row = next(line for line in lines if seeded.ids[name] in line)
            assert row.split()[:2] == [seeded.ids[name], "applied"]
            assert seeded.tasks[name] in row.split()

    def test_pipe_without_columns_prints_whole_lines(self, seeded: Seeded) -> None:
        """Piped with no COLUMNS the table is as wide as it needs (like ps), nothing cut."""
        result = cli(seeded.env, "events", "list", "-o", "wide")
        assert result.returncode == 0, result.stderr
        row = next(line for line in result.stdout.splitlines() if seeded.ids["deep"] in line)
        assert "unmappable: no_generation_object" in row
        assert "…" not in row

    def test_terminal_table_fits_80_columns(self, seeded: Seeded) -> None:
        """On an 80-column terminal rich prints one line per event, ids whole, none wrapped."""
        run = run_on_terminal(seeded.env, "events", "list", *ORDINARY, columns=80)
        assert run.returncode == 0, run.stderr
        lines = [line for line in visible_lines(run.text) if line.strip()]
        assert len(lines) == 4, lines
        assert all(len(line) <= 80 for line in lines), lines
        for name in ("plain", "failed", "deep"):
            assert any(line.startswith(seeded.ids[name] + " ") for line in lines), name
        assert "\x1b[" in run.text  # rich's colours: the terminal path was taken

    def test_wide_adds_columns(self, seeded: Seeded) -> None:
        """``-o wide`` adds the receive time, source, attempts and the full last error."""
        result = cli(seeded.env, "events", "list", "-o", "wide")
        header = result.stdout.splitlines()[0].split()
        assert header == [
            "RECEIVED_AT",
            "EVENT_ID",
            "SOURCE",
            "STATE",
            "TYPE",
            "RECORD_KEY",
            "ATTEMPTS",
            "REASON",
            "LAST_ERROR",
        ]

    def test_name_prints_ids_only(self, seeded: Seeded) -> None:
        """``-o name`` prints the event ids, one per line, newest first, nothing else."""
        result = cli(seeded.env, "events", "list", "-o", "name")
        assert result.returncode == 0, result.stderr
        order = ["deep", "hostile", "failed", "plain"]
        assert [seeded.ids[name] for name in order] == result.stdout.splitlines()

    def test_json_flag_equals_output_json(self, seeded: Seeded) -> None:
        """``--json`` and ``-o json`` print the same JSON array (SPEC §10)."""
        flag = cli(seeded.env, "events", "list", "--json")
        option = cli(seeded.env, "events", "list", "-o", "json")
        assert flag.returncode == option.returncode == 0
        assert orjson.loads(flag.stdout) == orjson.loads(option.stdout)
        assert {item["event_id"] for item in orjson.loads(flag.stdout)} == set(seeded.ids.values())

    def test_json_and_other_output_is_usage_error(self, seeded: Seeded) -> None:
        """``--json -o wide`` contradicts itself: exit 2."""
        result = cli(seeded.env, "events", "list", "--json", "-o", "wide")
        assert result.returncode == 2
        assert "--json" in result.stderr

    @pytest.mark.parametrize("output", [[], ["-o", "name"], ["--json"]], ids=str)
    def test_limit_says_it_cut_the_list(self, seeded: Seeded, output: list[str]) -> None:
        """A list cut by --limit says "showing 2 of 4" on stderr; stdout stays parseable."""
        result = cli(seeded.env, "events", "list", "--limit", "2", *output)
        assert result.returncode == 0, result.stderr
        assert "showing 2 of 4 (raise --limit or narrow the filter)" in result.stderr
        assert "showing" not in result.stdout
        uncut = cli(seeded.env, "events", "list", "--limit", "4", *output)
        assert "showing" not in uncut.stderr

    def test_error_code_with_name_output(self, seeded: Seeded) -> None:
        """``--error CODE -o name`` prints the ids of the dead events with that reason."""
        result = cli(seeded.env, "events", "list", "--error", "unmappable", "-o", "name")
        assert result.returncode == 0, result.stderr
        assert [seeded.ids["deep"]] == result.stdout.splitlines()


def state_of(env: dict[str, str], event_id: str) -> str:
    result = cli(env, "events", "show", event_id, "--json")
    return str(orjson.loads(result.stdout)["state"]) if result.returncode == 0 else ""


def send_later(url: str, event_id: str) -> str:
    """Deliver a fresh event; return its task id."""
    task_id = long_id("task")
    deliver(url, orjson.dumps(envelope(generation(task_id), event_id)), event_id)
    return task_id


class TestFollow:
    def test_ndjson_stream_shows_an_event_sent_after_it_started(self, seeded: Seeded) -> None:
        """``--follow -o json`` prints one JSON object per line: the latest match, then only
        an event delivered after it started (pending, then applied, or applied at once);
        SIGINT (Ctrl-C) ends it with exit 0."""
        # Two events just before it starts: --limit 1 shows the newer; the older one, within
        # the poll's look-back, must not turn up as if it had just arrived.
        before = [long_id("msg"), long_id("msg")]
        for earlier in before:
            send_later(seeded.url, earlier)
        for earlier in before:  # settled, so neither is printed again for a state change
            eventually(lambda e=earlier: state_of(seeded.env, e) == "applied", what=earlier)
        command = [sys.executable, "-m", "receiver", "events", "list", "--follow", "-o", "json"]
        with subprocess.Popen(
            [*command, "--limit", "1"], env=seeded.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as process:  # fmt: skip
            try:
                assert process.stdout is not None
                assert process.stderr is not None
                first = orjson.loads(process.stdout.readline())
                assert first["event_id"] == before[1]  # the newest stored event
                event_id = long_id("msg")
                task_id = send_later(seeded.url, event_id)
                states = []
                while "applied" not in states:
                    line = orjson.loads(process.stdout.readline())
                    assert (event_id, task_id) == (line["event_id"], line["record_key"])
                    states.append(line["state"])
                assert states in (["applied"], ["pending", "applied"])
                process.send_signal(signal.SIGINT)
                assert process.wait(30) == 0
                assert "Traceback" not in process.stderr.read()
            finally:
                if process.poll() is None:
                    process.kill()

    def test_table_on_a_terminal_shows_new_rows(self, seeded: Seeded) -> None:
        """On a terminal ``--follow`` prints the header once and a row for a new event;
        Ctrl-C exits 0."""
        event_id = long_id("msg")
        sent: list[str] = []

        def watch(raw: bytes) -> bool:
            lines = visible_lines(raw.decode("utf-8", "replace"))
            if not sent and any("EVENT_ID" in line for line in lines):
                sent.append(send_later(seeded.url, event_id))
            return any(line.split()[:2] == [event_id, "applied"] for line in lines)

        run = run_on_terminal(
            seeded.env, "events", "list", "--follow", "--limit", "1", columns=120,
            stop_when=watch,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        lines = [line for line in visible_lines(run.text) if line.strip()]
        assert lines[0].split()[:2] == ["EVENT_ID", "STATE"]
        assert [line for line in lines if "EVENT_ID" in line] == lines[:1]
        assert any(line.split()[:2] == [event_id, "applied"] for line in lines), lines
        assert all(len(line) <= 120 for line in lines)

    def test_follow_with_until_is_usage_error(self, seeded: Seeded) -> None:
        """``--follow --until`` cannot both hold: exit 2."""
        assert cli(seeded.env, "events", "list", "--follow", "--until", "1h").returncode == 2


class TestHostileFields:
    @pytest.mark.parametrize("output", [[], ["-o", "wide"]], ids=["table", "wide"])
    def test_markup_and_escapes_in_list_on_a_terminal(
        self, seeded: Seeded, output: list[str]
    ) -> None:
        """Markup in a type is shown as typed, not obeyed or crashing; escape sequences,
        CR and bidi overrides in a record key reach the terminal as visible text."""
        run = run_on_terminal(seeded.env, "events", "list", *output, columns=250)
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert_terminal_safe(run.raw)
        row = next(line for line in visible_lines(run.text) if seeded.ids["hostile"] in line)
        assert "generation.[bold red]boom[/]" in row
        assert r"task_\x1b]0;pwned\x07\x0d\u202eevil" in row

    def test_show_text_on_a_terminal(self, seeded: Seeded) -> None:
        """``events show`` prints the hostile event with every control character escaped."""
        run = run_on_terminal(seeded.env, "events", "show", seeded.ids["hostile"])
        assert run.returncode == 0, run.stderr
        assert_terminal_safe(run.raw)
        assert MARKUP_TYPE in run.text
        # The JSON encoder escapes C0 controls; printable() escapes what it leaves (C1, bidi).
        assert r"line\rover\u001b]0;pwned\u0007\u001b[2J\x9b31m" in run.text
        assert r"task_\x1b]0;pwned\x07\x0d\u202eevil" in run.text

    def test_show_json_is_escaped_by_the_encoder(self, seeded: Seeded) -> None:
        """``show --json`` keeps the exact (redacted) strings, escaped as JSON requires."""
        result = cli(seeded.env, "events", "show", seeded.ids["hostile"], "--json")
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout
        shown = orjson.loads(result.stdout)
        assert (MARKUP_TYPE, HOSTILE_TASK) == (shown["type"], shown["record_key"])

    def test_raw_body_is_the_stored_bytes(self, seeded: Seeded) -> None:
        """``--raw`` is the exception by design: the stored bytes, unchanged."""
        result = cli(seeded.env, "events", "show", seeded.ids["hostile"], "--raw")
        assert result.returncode == 0
        assert orjson.loads(result.stdout)["data"]["id"] == HOSTILE_TASK


def assert_terminal_safe(raw: bytes) -> None:
    """Nothing but rich's own colour codes (CSI ... m) and line ends reached the terminal."""
    stripped = re.sub(rb"\x1b\[[0-9;]*m", b"", raw)
    controls = {byte for byte in stripped if byte < 0x20 and byte not in b"\r\n"}
    assert controls == set(), stripped
    text = stripped.decode("utf-8")
    assert not re.search("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]", text), text


class TestDeepBody:
    @pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
    def test_show_prints_a_deep_body_as_text(self, seeded: Seeded, terminal: bool) -> None:
        """A body nested 300 levels is shown redacted as text instead of failing."""
        args = ("events", "show", seeded.ids["deep"])
        if terminal:
            run = run_on_terminal(seeded.env, *args)
            code, output, errors = run.returncode, run.text, run.stderr
        else:
            result = cli(seeded.env, *args)
            code, output, errors = result.returncode, result.stdout, result.stderr
        assert code == 0, errors
        assert "Recursion" not in errors + output
        assert "[" * DEPTH + "]" * DEPTH in output

    def test_show_json_carries_a_deep_body_as_a_string(self, seeded: Seeded) -> None:
        """``show --json`` of that event is valid JSON with the body as (redacted) text."""
        result = cli(seeded.env, "events", "show", seeded.ids["deep"], "--json")
        assert result.returncode == 0, result.stderr
        body: Any = orjson.loads(result.stdout)["body"]
        assert isinstance(body, str)
        assert body.endswith("]" * DEPTH + "}")


class TestFitWidths:
    COLUMNS = (
        Column("id", "ID", whole=True, required=True),
        Column("type", "TYPE", keep=1),
        Column("error", "ERROR", keep=2),
    )

    def widths(self, width: int, *rows: tuple[str, str, str]) -> list[int | None]:
        return fit_widths(self.COLUMNS, [["ID", "TYPE", "ERROR"], *rows], width)

    def test_no_limit_keeps_natural_widths(self) -> None:
        """Width 0 (a pipe without COLUMNS) keeps every column as wide as its widest cell."""
        assert [10, 20, 40] == self.widths(0, ("i" * 10, "t" * 20, "e" * 40))

    def test_lowest_keep_is_cut_first(self) -> None:
        """Too wide: the lowest-keep column gives way first, then the next; ids never shrink."""
        assert [10, 14, 40] == self.widths(68, ("i" * 10, "t" * 20, "e" * 40))
        assert [10, 6, 36] == self.widths(56, ("i" * 10, "t" * 20, "e" * 40))

    def test_cuts_within_a_level_are_shared(self) -> None:
        """Columns of one level are cut widest first, down to the next widest."""
        columns = (Column("a", "A"), Column("b", "B"))
        assert [15, 13] == fit_widths(columns, [["A", "B"], ["a" * 30, "b" * 13]], 30)

    def test_columns_drop_by_keep_then_ids_stay(self) -> None:
        """When cutting to the minimum is not enough, the lowest ``keep`` column goes first,
        and a line of ids alone is left as it is (the terminal wraps it, nothing cuts it)."""
        assert [30, None, 8] == self.widths(40, ("i" * 30, "t" * 20, "e" * 40))
        assert [30, None, None] == self.widths(20, ("i" * 30, "t" * 20, "e" * 40))

    def test_a_whole_column_is_dropped_not_cut(self) -> None:
        """A whole column that is not required (a second id) goes before it would be cut."""
        columns = (
            Column("id", "ID", whole=True, required=True),
            Column("other", "OTHER", whole=True),
            Column("text", "TEXT", keep=1),
        )
        lines = [["ID", "OTHER", "TEXT"], ["i" * 20, "o" * 20, "t" * 10]]
        assert [20, None, 10] == fit_widths(columns, lines, 40)


@pytest.fixture(scope="module")
def rejected(seeded: Seeded) -> list[str]:
    """Three deliveries the service turned away: a wrong key, a stale stamp, no headers."""
    body = orjson.dumps(envelope(generation()))
    other = "whsec_" + base64.b64encode(b"not-the-receivers-key-0123456789").decode()
    sent = [
        signed_headers(body, long_id("msg"), secret=other),
        signed_headers(body, long_id("msg"), timestamp=int(time.time()) - 1000),
        {"content-type": "application/json"},
    ]
    for headers in sent:
        answer = httpx.post(seeded.url, content=body, headers=headers, timeout=10)
        assert answer.status_code in (400, 401)

    def recorded() -> list[str]:
        result = cli(seeded.env, "deliveries", "list", "--rejected", "-o", "name")
        return result.stdout.splitlines() if result.returncode == 0 else []

    eventually(lambda: len(recorded()) == 3, what="three recorded rejections")
    return recorded()


class TestRejectedDeliveries:
    def test_table_fits_80_columns_with_ids_whole(
        self, seeded: Seeded, rejected: list[str]
    ) -> None:
        """The rejected-deliveries table fits COLUMNS=80, one line each, ids whole."""
        result = cli(seeded.env, "deliveries", "list", "--rejected", COLUMNS="80")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 4
        assert all(len(line) <= 80 for line in lines), lines
        assert [line.split()[0] for line in lines[1:]] == rejected
        codes = {line.split()[3] for line in lines[1:]}
        assert {"invalid_signature", "timestamp_out_of_tolerance"} <= codes

    def test_wide_shows_header_names_never_values(
        self, seeded: Seeded, rejected: list[str]
    ) -> None:
        """``-o wide`` adds client, header names, body size, keys tried; no header value."""
        result = cli(seeded.env, "deliveries", "list", "--rejected", "-o", "wide")
        header = result.stdout.splitlines()[0].split()
        assert {"CLIENT", "HEADERS", "BODY_BYTES", "KEYS_TRIED"} <= set(header)
        assert "webhook-signature" in result.stdout
        assert "v1," not in result.stdout

    def test_limit_says_more_match(self, seeded: Seeded, rejected: list[str]) -> None:
        """``--limit 2`` of three: two rows and a notice on stderr."""
        result = cli(seeded.env, "deliveries", "list", "--rejected", "--limit", "2", "-o", "name")
        assert result.stdout.splitlines() == rejected[:2]
        assert "showing 2; more match" in result.stderr

    def test_json_equals_output_json(self, seeded: Seeded, rejected: list[str]) -> None:
        """``--json`` and ``-o json`` print the same array."""
        flag = cli(seeded.env, "deliveries", "list", "--rejected", "--json")
        option = cli(seeded.env, "deliveries", "list", "--rejected", "-o", "json")
        assert orjson.loads(flag.stdout) == orjson.loads(option.stdout)
        assert [item["id"] for item in orjson.loads(flag.stdout)] == rejected


class TestStatusAndRecords:
    def test_status_prints_the_keys_as_a_table(self, seeded: Seeded) -> None:
        """status ends with the signing keys by fingerprint and their recent use."""
        result = cli(seeded.env, "status", COLUMNS="80")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        [header] = [line for line in lines if line.startswith("SOURCE")]
        assert header.split()[:3] == ["SOURCE", "KEY", "VERIFIED_1H"]
        key_row = lines[lines.index(header) + 1].split()
        assert key_row[0] == "rivya"
        assert key_row[1] == key_fingerprint(TEST_SECRET, Scheme.STANDARD)
        assert int(key_row[2]) >= 4
        tables = lines[lines.index("") :]  # the summary lines come first
        assert all(len(line) <= 80 for line in tables), tables

    def test_records_show_escapes_what_the_sink_holds(self, seeded: Seeded) -> None:
        """records show of the hostile record prints its fields escaped and its events."""
        run = run_on_terminal(seeded.env, "records", "show", HOSTILE_TASK)
        assert run.returncode == 0, run.stderr
        assert_terminal_safe(run.raw)
        assert r"record task_\x1b]0;pwned\x07\x0d\u202eevil, as the sink holds it:" in run.text
        assert any(
            line.split()[:2] == [seeded.ids["hostile"], "applied"]
            for line in visible_lines(run.text)
        )
