"""The redaction step and the logging configuration (SPEC §8)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import select
import subprocess
import sys
import threading
import time

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.logs import add_timestamp, configure_logging, redact
from receiver.redaction import (
    _SECRET_VALUE,
    _URL_QUERY,
    REDACTED,
    may_hold_secret,
    redact_named_values,
    redact_text,
    redact_value,
)

# Text built from the pieces the redaction patterns look for, in any case and order.
_FRAGMENTS = st.sampled_from(
    [
        *("whsec_", "rvya_sk_", "bearer ", "BeArEr ", "://", "v1,", "v1a,", "v1=", "V1,", "?"),
        *("@", ":", "/", " ", "=", "_", "abc", "K5oZfzN95Z9UVu1EsfQmfVNQ", "deadbeef" * 5),
    ]
)


class TestRedactText:
    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            pytest.param(
                "key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw= end", "MfKQ9r8GKY", id="whsec"
            ),
            pytest.param("api rvya_sk_test_abc123XYZ", "abc123XYZ", id="api-key"),
            pytest.param("Authorization: Bearer eyJhbGciOi.J9.x", "eyJhbGciOi", id="bearer"),
            pytest.param("bearer abc.def", "abc.def", id="bearer-lower"),
            pytest.param(
                "get https://cdn.example/a.png?X-Amz-Signature=deadbeef&x=1 ok",
                "deadbeef",
                id="signed-url",
            ),
            pytest.param("redis://user:hunter2@redis:6379/0", "hunter2", id="url-password"),
            pytest.param("postgresql://app:pa55@db/x", "pa55", id="dsn-password"),
            pytest.param(
                "sig v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4= x",
                "K5oZfzN95Z9UVu1E",
                id="v1-signature",
            ),
            pytest.param("t=1,v1=" + "ab" * 32, "ab" * 32, id="stripe-signature"),
        ],
    )
    def test_masks_secret_values(self, text: str, secret: str) -> None:
        """Secret-looking values inside free text are masked."""
        redacted = redact_text(text)
        assert secret not in redacted
        assert REDACTED in redacted

    def test_plain_text_is_untouched(self) -> None:
        """Ordinary text passes through unchanged (and cheaply)."""
        assert (
            redact_text("event applied for task_123 in 4 ms")
            == "event applied for task_123 in 4 ms"
        )

    @settings(max_examples=1000)
    @given(st.lists(_FRAGMENTS | st.text(max_size=4), max_size=8).map("".join))
    def test_cheap_precheck_never_skips_a_match(self, text: str) -> None:
        """The substring pre-check lets through every text a redaction pattern would change."""
        if _SECRET_VALUE.search(text) or _URL_QUERY.search(text):
            assert may_hold_secret(text)

    def test_url_without_query_keeps_path(self) -> None:
        """A URL without a query string stays readable."""
        assert redact_text("https://media.example/result.png") == "https://media.example/result.png"


class TestRedactNamedValues:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                '{"api_key": "k1", "password": "p w"}',
                '{"api_key": "[REDACTED]", "password": "[REDACTED]"}',
            ),
            ("password=hunter2&user=bob", "password=[REDACTED]&user=bob"),
            ("X-Api-Key: abc123 then", "X-Api-Key: [REDACTED] then"),
            ("{'client_secret': 'a b'}", "{'client_secret': '[REDACTED]'}"),
            ('{"token":"a\\"b","next":1}', '{"token":"[REDACTED]","next":1}'),
            (
                '{"error":"bad","detail":"model unknown"}',
                '{"error":"bad","detail":"model unknown"}',
            ),
        ],
    )
    def test_masks_values_by_their_name(self, text: str, expected: str) -> None:
        """A downstream's text: a pair named like a secret loses its value, any shape;
        other pairs stay readable."""
        assert expected == redact_named_values(text)

    def test_masks_what_redact_text_masks_too(self) -> None:
        """Values recognised by their shape are masked as well, under any name."""
        text = '{"note": "Bearer abc.def", "url": "https://cdn.example/a.png?sig=s3cr3t"}'
        redacted = redact_named_values(text)
        assert "abc.def" not in redacted
        assert "s3cr3t" not in redacted
        assert redact_text(text) == redacted


class TestRedactProcessor:
    @pytest.mark.parametrize(
        "key",
        [
            "secret",
            "webhook_secret",
            "token",
            "password",
            "Authorization",
            "signature",
            "api_key",
            "apiKey",
            "cookie",
            "set-cookie",
        ],
    )
    def test_secret_keys_are_masked(self, key: str) -> None:
        """Keys that look secret are masked whatever their value."""
        assert {key: REDACTED} == redact(None, "info", {key: "anything"})

    def test_nested_values_are_redacted(self) -> None:
        """Mappings and lists are walked; bytes are never printed."""
        event = {
            "headers": {"x-signature": "v", "ok": "fine"},
            "urls": ["https://x.example/a?sig=1"],
            "raw": b"body bytes",
        }
        assert {
            "headers": {"x-signature": REDACTED, "ok": "fine"},
            "urls": [f"https://x.example/a?{REDACTED}"],
            "raw": REDACTED,
        } == redact(None, "info", event)

    @settings(max_examples=500)
    @given(
        st.dictionaries(
            st.sampled_from(["event", "event_id", "type", "record_key", "source", "detail"]),
            st.lists(_FRAGMENTS | st.text(max_size=4), max_size=6).map("".join) | st.integers(),
            max_size=6,
        )
    )
    def test_a_line_is_masked_as_each_of_its_strings_would_be(
        self, event: dict[str, str | int]
    ) -> None:
        """Screening a line's strings together changes nothing: every string comes out as
        redact_text makes it alone, and no marker forms across two strings."""
        expected = {
            key: redact_text(value) if isinstance(value, str) else value
            for key, value in event.items()
        }

        assert expected == redact(None, "info", dict(event))

    def test_one_secret_among_plain_strings_is_masked(self) -> None:
        """The line-wide screen finds a secret in any one of the strings, and masks only it."""
        line = {"event": "webhook", "source": "rivya", "url": "https://x.example/a?sig=1"}

        assert {
            "event": "webhook",
            "source": "rivya",
            "url": f"https://x.example/a?{REDACTED}",
        } == redact(None, "info", line)

    def test_unknown_objects_are_stringified_then_redacted(self) -> None:
        """Objects are rendered with str() before the check, so their text is redacted too."""

        class Leaky:
            def __str__(self) -> str:
                return "token rvya_sk_test_1"

        assert "rvya_sk_test_1" not in str(redact_value(Leaky()))


class TestTimestamp:
    def test_iso_utc_with_microseconds_and_current(self) -> None:
        """The same text as structlog's ISO UTC stamper, for the current time."""
        before = datetime.datetime.now(tz=datetime.UTC)
        stamp = add_timestamp(None, "info", {})["timestamp"]
        after = datetime.datetime.now(tz=datetime.UTC)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
        parsed = datetime.datetime.fromisoformat(stamp)
        assert before - datetime.timedelta(microseconds=1) <= parsed <= after

    def test_seconds_advance(self) -> None:
        """The cached second is replaced when the clock moves on."""
        first = add_timestamp(None, "info", {})["timestamp"]
        time.sleep(1.01)
        second = add_timestamp(None, "info", {})["timestamp"]
        assert first[:19] != second[:19]


class TestConfiguredOutput:
    @pytest.fixture(autouse=True)
    def _reset(self) -> None:
        yield
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []

    def test_exception_text_is_redacted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An exception message carrying a signed URL is masked after it is rendered."""
        configure_logging("info", "json")
        try:
            raise RuntimeError("fetch https://cdn.example/x?X-Amz-Signature=topsecret failed")
        except RuntimeError:
            structlog.get_logger().exception("boom")
        line = orjson.loads(capsys.readouterr().out.strip())
        assert "topsecret" not in line["exception"]
        assert (line["event"], line["level"]) == ("boom", "error")

    def test_stdlib_logging_is_json_and_redacted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Third-party stdlib log records come out as redacted JSON lines too."""
        configure_logging("info", "json")
        logging.getLogger("somelib").warning("connecting to redis://u:pw123@h:1/0")
        line = orjson.loads(capsys.readouterr().out.strip())
        assert "pw123" not in line["event"]
        assert {"event", "level", "timestamp"} <= set(line)

    def test_level_filter(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Lines below the configured level are dropped."""
        configure_logging("warning", "json")
        structlog.get_logger().info("quiet")
        structlog.get_logger().warning("loud")
        out = capsys.readouterr().out
        assert "quiet" not in out
        assert "loud" in out

    async def test_lines_in_a_loop_keep_their_order(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """structlog and stdlib lines of one loop iteration come out together, in order."""
        configure_logging("info", "json")
        structlog.get_logger().info("first")
        logging.getLogger("somelib").warning("second")
        structlog.get_logger().info("third")
        await asyncio.sleep(0)
        events = [orjson.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
        assert events == ["first", "second", "third"]

    def test_buffered_lines_are_written_at_exit(self) -> None:
        """A line logged in the loop's last iteration still reaches stdout."""
        # The loop stops in the iteration that logged, so only the exit hook can write it.
        code = (
            "import asyncio, structlog\n"
            "from receiver.logs import configure_logging\n"
            "configure_logging('info', 'json')\n"
            "loop = asyncio.new_event_loop()\n"
            "loop.call_soon(lambda: (structlog.get_logger().info('last words'), loop.stop()))\n"
            "loop.run_forever()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        assert orjson.loads(result.stdout)["event"] == "last words"

    def test_bound_context_levels_and_interpolation(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Bound context merges into each line; level names and %-interpolation as structlog's."""
        configure_logging("debug", "json")
        logger = structlog.get_logger("t").bind(source="rivya")
        logger.debug("n=%d", 3, extra=1)
        logger.warn("careful")
        logger.critical("down", api_key="not-a-real-key")
        lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(line["event"], line["level"]) for line in lines] == [
            ("n=3", "debug"),
            ("careful", "warning"),
            ("down", "critical"),
        ]
        assert all(line["source"] == "rivya" for line in lines)
        assert (lines[0]["extra"], lines[2]["api_key"]) == (1, REDACTED)

    async def test_lines_from_other_threads_are_all_written(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Lines logged from threads while the loop logs too: every one comes out whole."""
        lines_each = 500
        configure_logging("info", "json")
        logger = structlog.get_logger()

        def from_thread(n: int) -> None:
            for k in range(lines_each):
                logger.info("thread", n=n, k=k)

        threads = [threading.Thread(target=from_thread, args=(n,)) for n in range(4)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
        try:
            for thread in threads:
                thread.start()
            for k in range(lines_each):
                logger.info("loop", k=k)
                await asyncio.sleep(0)
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        await asyncio.sleep(0)
        lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(lines) == 5 * lines_each
        assert sum(line["event"] == "loop" for line in lines) == lines_each
        assert [line["k"] for line in lines if line.get("n") == 2] == list(range(lines_each))


STALL_SCRIPT = """
import asyncio, sys, time
import structlog
from receiver import metrics
from receiver.logs import configure_logging

configure_logging("info", "json")
log = structlog.get_logger()

async def main():
    worst, last = 0.0, time.monotonic()
    for k in range(__LINES__):
        log.info("line", k=k, pad="x" * 200)
        if k % 50 == 49:  # a loop iteration per 50 lines, like a busy service
            await asyncio.sleep(0)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
    dropped = metrics.LOG_LINES_DROPPED._value.get()
    sys.stderr.write(f"{worst} {dropped}\\n")
    sys.stderr.flush()
    sys.stdin.readline()  # the parent reads stdout from now on
    await asyncio.sleep(1)  # the loop sends the backlog as the pipe drains
    log.info("after")
    await asyncio.sleep(0.5)

__RUN__(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_stalled_stdout_never_blocks_the_loop(loop: str) -> None:
    """stdout is a pipe nobody reads: the loop keeps its pace, lines past the backlog are
    dropped and counted; once the pipe is read, every line that comes out is whole and in
    order, followed by one line saying how many were dropped, then the next line."""
    lines = 20_000  # ~5.6 MB: far past the pipe (64 KiB) and the backlog
    runner = "asyncio.run" if loop == "asyncio" else "__import__('uvloop').run"
    script = STALL_SCRIPT.replace("__LINES__", str(lines)).replace("__RUN__", runner)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        # A writer that blocked would never get here: the parent reads nothing until then.
        reported, _, _ = select.select([process.stderr], [], [], 60)
        assert reported, "the loop blocked on stdout"
        report = process.stderr.readline().decode().split()
        assert len(report) == 2, "the loop blocked on stdout (or the script failed)"
        process.stdin.write(b"go\n")
        process.stdin.flush()
        out = process.stdout.read()
        assert 0 == process.wait(30)
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
    worst, dropped = float(report[0]), int(float(report[1]))
    parsed = [orjson.loads(line) for line in out.splitlines()]  # every line is whole JSON
    numbered = [line["k"] for line in parsed if line["event"] == "line"]
    tail = [line["event"] for line in parsed if line["event"] != "line"]
    assert worst < 1.0, f"the loop stalled for {worst:.2f}s"
    assert numbered == sorted(numbered)
    assert (dropped > 0, lines - dropped) == (True, len(numbered))
    assert ["log_lines_dropped", "after"] == tail
    assert dropped == next(line["dropped"] for line in parsed if line["event"] != "line")
