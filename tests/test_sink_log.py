"""LogSink: one JSON line per record on stdout, with signed URLs masked."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from receiver.models import ApplyOutcome
from receiver.sinks.base import Sink, find_factory, open_sink
from receiver.sinks.log import LogSink
from tests.sink_contract import ISO_TIME, full_record, make_record, new_key, sink_settings


@pytest.fixture
def sink(tmp_path: Path) -> LogSink:
    return LogSink("log:", sink_settings(tmp_path, "log:"))


class TestLogSink:
    async def test_one_json_line_per_record(
        self, sink: LogSink, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each apply prints exactly one JSON object with event, level and timestamp."""
        first, second = make_record(new_key(), "queued"), make_record(new_key(), "failed")
        assert await sink.apply(first) is ApplyOutcome.APPLIED
        assert await sink.apply(second) is ApplyOutcome.APPLIED
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2
        entries = [orjson.loads(line) for line in lines]
        assert [entry["record_key"] for entry in entries] == [first.record_key, second.record_key]
        for entry in entries:
            assert entry["event"] == "record_applied"
            assert entry["level"] == "info"
            assert re.match(ISO_TIME, entry["timestamp"])

    async def test_record_fields_with_urls_masked(
        self, sink: LogSink, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Fields are the record's, except URL query strings (signatures) are masked."""
        signed = "https://cdn.example/a.png?X-Amz-Signature=sekrit"
        record = replace(full_record(new_key()), result_urls=(signed, "https://cdn.example/b.png"))
        await sink.apply(record)
        out = capsys.readouterr().out
        assert "sekrit" not in out
        assert "X-Amz-Signature=abc" not in out
        entry = orjson.loads(out)
        expected = record.to_json()
        # mask_url's ``?***`` then the log redaction's own mark, as in every log line.
        expected["primary_url"] = "https://media.example/result.png?[REDACTED]"
        expected["result_urls"] = [
            "https://cdn.example/a.png?[REDACTED]",
            "https://cdn.example/b.png",
        ]
        assert {name: entry[name] for name in expected} == expected

    async def test_every_field_is_redacted(
        self, sink: LogSink, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Secret-looking values in any field (an API key, a bearer token, a webhook secret,
        URL credentials) are masked like in every log line; plain fields stay as they are."""
        secrets = {
            "client_request_id": "rvya_sk_live_LEAK0123456789",
            "error_message": "upstream said: Bearer LEAKTOKEN0123456789 for whsec_LEAKSECRET0123",
            "model": "https://user:LEAKPASSWORD@models.example/z?sig=LEAKSIG",
        }
        record = replace(full_record(new_key()), **secrets)
        await sink.apply(record)
        out = capsys.readouterr().out
        for needle in ("LEAK0123456789", "LEAKTOKEN", "LEAKSECRET", "LEAKPASSWORD", "LEAKSIG"):
            assert needle not in out
        entry = orjson.loads(out)
        assert "[REDACTED]" in entry["client_request_id"]
        assert "[REDACTED]" in entry["error_message"]
        plain = ("record_key", "status", "source_updated_at", "last_event_id", "final_credits")
        assert {name: record.to_json()[name] for name in plain} == {
            name: entry[name] for name in plain
        }

    async def test_always_applied(self, sink: LogSink, capsys: pytest.CaptureFixture[str]) -> None:
        """There is no stored state to guard: even an older event is printed and applied."""
        key = new_key()
        assert await sink.apply(make_record(key, "succeeded", 9)) is ApplyOutcome.APPLIED
        assert await sink.apply(make_record(key, "queued", 1)) is ApplyOutcome.APPLIED
        assert len(capsys.readouterr().out.splitlines()) == 2

    async def test_lifecycle_is_a_no_op(self, sink: LogSink) -> None:
        """ping, setup and aclose need nothing and succeed."""
        assert isinstance(sink, Sink)
        await sink.setup()
        await sink.ping()
        await sink.aclose()

    def test_opened_from_settings(self, tmp_path: Path) -> None:
        """RECEIVER_SINK=log: selects this sink."""
        assert find_factory("log") is LogSink
        assert isinstance(open_sink(sink_settings(tmp_path, "log:")), LogSink)
