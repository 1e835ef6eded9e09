"""``receiver verify``: a captured delivery explained (SPEC §10, issue 14 item 8).

The headers-file reader is tested on its own; the command runs as a real process on
captures signed like Rivya's, and must never print a key or a signature.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from receiver.ops.captured import CaptureError, parse_headers
from receiver.signing import Scheme, key_fingerprint
from tests.conftest import TEST_SECRET
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
from tests.servers import ServiceProcess

OTHER_SECRET = "whsec_" + base64.b64encode(b"the-sender-has-another-key-0123").decode()


def fingerprint(key: str) -> str:
    return key_fingerprint(key, Scheme.STANDARD)


class TestParseHeaders:
    def test_raw_request(self) -> None:
        """A raw HTTP request: the request line is skipped, names lower-cased, the body
        after the blank line ignored."""
        raw = (
            b"POST /webhooks/rivya HTTP/1.1\r\nHost: r.example\r\nWebhook-Id: msg_1\r\n"
            b'webhook-timestamp: 1700000000\r\n\r\n{"id": 1}\r\nX-Not: a header\r\n'
        )
        assert {
            "host": "r.example",
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
        } == parse_headers(raw)

    def test_curl_dump_and_folding(self) -> None:
        """``curl -D`` output: the status line is skipped, a folded line continues the
        previous header, and a repeated header keeps its last value as the receiver does."""
        raw = b"HTTP/1.1 200 OK\nA: one\n  two\nB: first\nB: second\n"
        assert {"a": "one two", "b": "second"} == parse_headers(raw)

    def test_json_object(self) -> None:
        """A JSON object of name: value (a list keeps its last value)."""
        raw = b'  {"Webhook-Id": "msg_1", "webhook-signature": ["v1,a", "v1,b"]}'
        assert {"webhook-id": "msg_1", "webhook-signature": "v1,b"} == parse_headers(raw)

    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"", "no headers found"),
            (b"just some text\n", "line 1: not a 'Name: value' header line"),
            (b"{not json", "not valid JSON"),
            (b'{"a": 1}', "header 'a': the value must be a string"),
        ],
        ids=["empty", "not-a-header", "bad-json", "number-value"],
    )
    def test_bad_files(self, raw: bytes, message: str) -> None:
        """Anything else is a CaptureError saying what is wrong."""
        with pytest.raises(CaptureError, match=message):
            parse_headers(raw)


def capture(
    tmp_path: Path,
    *,
    secret: str = TEST_SECRET,
    age_seconds: int = 0,
    as_json: bool = False,
    body_suffix: bytes = b"",
    drop: str = "",
) -> tuple[Path, Path, dict[str, str]]:
    """Headers and body files of a delivery signed with ``secret`` ``age_seconds`` ago."""
    body = orjson.dumps(envelope(generation()))
    headers = signed_headers(body, timestamp=int(time.time()) - age_seconds, secret=secret)
    headers.pop(drop, None)
    headers_file = tmp_path / ("headers.json" if as_json else "headers.txt")
    if as_json:
        headers_file.write_bytes(orjson.dumps(headers))
    else:
        lines = [f"{name}: {value}" for name, value in headers.items()]
        headers_file.write_text("POST /webhooks/rivya HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n")
    body_file = tmp_path / "body.json"
    body_file.write_bytes(body + body_suffix)
    return headers_file, body_file, headers


def verify(
    tmp_path: Path, headers_file: Path, body_file: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """``receiver verify`` as a process, configured with TEST_SECRET (no Redis needed)."""
    environ = {
        "PATH": "/usr/bin:/bin",
        "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
        "RECEIVER_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "receiver", "verify", "--headers", str(headers_file),
         "--body", str(body_file), *args],
        env=environ, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def fields(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The labelled lines of the text output."""
    found = {}
    for line in result.stdout.splitlines():
        label, _, value = line.partition(":")
        found[label.strip()] = value.strip()
    return found


def assert_no_secret(result: subprocess.CompletedProcess[str], headers: dict[str, str]) -> None:
    output = result.stdout + result.stderr
    for secret in (TEST_SECRET, TEST_SECRET.removeprefix("whsec_"), OTHER_SECRET):
        assert secret not in output
    assert headers.get("webhook-signature", "v1,-").removeprefix("v1,") not in output


class TestVerify:
    @pytest.mark.parametrize("as_json", [False, True], ids=["raw-headers", "json-headers"])
    def test_a_good_delivery_passes(self, tmp_path: Path, as_json: bool) -> None:
        """A delivery signed with the configured key verifies: exit 0, the key that
        matched named by fingerprint, the skew within the tolerance."""
        headers_file, body_file, headers = capture(tmp_path, as_json=as_json)
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 0, result.stdout + result.stderr
        found = fields(result)
        assert found["headers"] == "webhook-*"
        assert found["event id"] == headers["webhook-id"]
        assert found["keys tried"] == fingerprint(TEST_SECRET)
        assert "within the 300 s tolerance" in found["skew"]
        assert found["result"].startswith("valid (would be accepted)")
        assert fingerprint(TEST_SECRET) in found["result"]
        assert_no_secret(result, headers)

    def test_a_skewed_delivery_is_explained(self, tmp_path: Path) -> None:
        """Signed 400 s ago: 401 timestamp_out_of_tolerance with the skew and the tolerance,
        and the key is cleared: at its own timestamp the signature matches."""
        headers_file, body_file, headers = capture(tmp_path, age_seconds=400)
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 1
        found = fields(result)
        assert "in the past (OUTSIDE the 300 s tolerance)" in found["skew"]
        assert int(found["skew"].split()[0]) in range(399, 410)
        assert found["result"].startswith("401 timestamp_out_of_tolerance: timestamp 4")
        assert f"matches key {fingerprint(TEST_SECRET)}" in found["signature"]
        assert_no_secret(result, headers)

    def test_a_wrong_key_is_explained(self, tmp_path: Path) -> None:
        """Signed with a key we do not hold: 401 invalid_signature, the keys tried listed
        by fingerprint, neither key printed."""
        headers_file, body_file, headers = capture(tmp_path, secret=OTHER_SECRET)
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 1
        found = fields(result)
        assert found["keys tried"] == fingerprint(TEST_SECRET)
        assert found["result"].startswith("401 invalid_signature: ")
        assert "1 configured key" in found["result"]
        assert fingerprint(OTHER_SECRET) not in result.stdout
        assert_no_secret(result, headers)

    def test_a_skewed_wrong_key_says_both(self, tmp_path: Path) -> None:
        """Old and signed with another key: the skew fails it, and the second look says
        the signature would not have matched either."""
        headers_file, body_file, headers = capture(tmp_path, secret=OTHER_SECRET, age_seconds=900)
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 1
        found = fields(result)
        assert found["result"].startswith("401 timestamp_out_of_tolerance")
        assert found["signature"].endswith("(even at its timestamp)")
        assert_no_secret(result, headers)

    def test_a_body_file_with_an_added_newline_gets_a_hint(self, tmp_path: Path) -> None:
        """An editor's final newline breaks the signature; the hint says so."""
        headers_file, body_file, headers = capture(tmp_path, body_suffix=b"\n")
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 1
        assert "the file has a newline the sender did not sign" in fields(result)["hint"]
        assert_no_secret(result, headers)

    def test_missing_headers_are_named(self, tmp_path: Path) -> None:
        """A capture without the signature header: 400 missing_signature_header naming it."""
        headers_file, body_file, _ = capture(tmp_path, drop="webhook-signature")
        result = verify(tmp_path, headers_file, body_file)
        assert result.returncode == 1
        found = fields(result)
        assert found["missing"] == "webhook-signature"
        assert found["result"].startswith("400 missing_signature_header")

    def test_at_judges_the_timestamp_then(self, tmp_path: Path) -> None:
        """``--at`` the capture's time: the skewed capture verifies as it did then."""
        headers_file, body_file, _ = capture(tmp_path, age_seconds=3600)
        assert verify(tmp_path, headers_file, body_file).returncode == 1
        assert verify(tmp_path, headers_file, body_file, "--at", "1h").returncode == 0

    def test_json(self, tmp_path: Path) -> None:
        """``--json`` prints one object with the diagnosis, no key and no signature."""
        headers_file, body_file, headers = capture(tmp_path, age_seconds=400)
        result = verify(tmp_path, headers_file, body_file, "--json")
        assert result.returncode == 1
        report: dict[str, Any] = orjson.loads(result.stdout)
        assert (report["valid"], report["status"], report["code"]) == (
            False,
            401,
            "timestamp_out_of_tolerance",
        )
        assert report["keys_tried"] == []  # the timestamp stopped it before any key
        assert report["at_signed_time"]["matched_key"] == fingerprint(TEST_SECRET)
        assert report["source"] == "rivya"
        assert_no_secret(result, headers)

    def test_stripe_scheme(self, tmp_path: Path) -> None:
        """A stripe-scheme source reads its one header; a good capture passes."""
        secret = "stripe-style-secret-0123456789"
        body = orjson.dumps({"id": "evt_s1", **envelope(generation())})
        timestamp = int(time.time())
        from receiver.signing import sign_stripe

        headers_file = tmp_path / "h.txt"
        headers_file.write_text(f"Rivya-Signature: {sign_stripe(secret, timestamp, body)}\n")
        body_file = tmp_path / "b.json"
        body_file.write_bytes(body)
        result = verify(
            tmp_path, headers_file, body_file,
            RECEIVER_SIGNATURE_SCHEME="stripe", RECEIVER_WEBHOOK_SECRET=secret,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert fields(result)["headers"] == "rivya-signature"
        assert secret not in result.stdout + result.stderr

    def test_needs_both_files(self, tmp_path: Path) -> None:
        """Without --headers and --body (or --rejected) it is a usage error."""
        result = subprocess.run(
            [sys.executable, "-m", "receiver", "verify"],
            env={"PATH": "/usr/bin:/bin", "RECEIVER_DATA_DIR": str(tmp_path)},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2


@pytest.mark.usefixtures("clean_redis")
def test_rejected_explains_a_recorded_rejection(tmp_path: Path, redis_url: str) -> None:
    """``verify --rejected ID`` prints what was recorded when a skewed delivery was turned
    away: the code and reason, the skew against the tolerance, the header names only."""
    env = {**base_env(tmp_path, redis_url, RECEIVER_LOG_LEVEL="warning"), "PATH": "/usr/bin:/bin"}
    body = orjson.dumps(envelope(generation()))
    headers = signed_headers(body, timestamp=int(time.time()) - 500)
    with ServiceProcess(env, tmp_path / "serve.log") as service:
        answer = httpx.post(f"{service.url}/webhooks/rivya", content=body, headers=headers)
        assert answer.status_code == 401

        def recorded() -> list[dict[str, Any]]:
            result = run(env, "deliveries", "list", "--rejected", "--json")
            return list(orjson.loads(result.stdout)) if result.returncode == 0 else []

        eventually(lambda: len(recorded()) == 1, what="the rejection to be recorded")
        [rejection] = recorded()
        result = run(env, "verify", "--rejected", rejection["id"])
        as_json = run(env, "verify", "--rejected", rejection["id"], "--json")
        unknown = run(env, "verify", "--rejected", "1-0")
    assert result.returncode == 0, result.stderr
    found = fields(result)
    # The skew is the receiver's clock minus the signed time: 500 s and a moment.
    assert re.fullmatch(
        r"401 timestamp_out_of_tolerance: timestamp 50\d s in the past, tolerance 300 s",
        found["result"],
    )
    assert re.fullmatch(r"50\d s in the past \(OUTSIDE the 300 s tolerance\)", found["skew"])
    assert found["event id"] == headers["webhook-id"]
    assert "webhook-signature" in found["headers"]
    assert orjson.loads(as_json.stdout)["code"] == "timestamp_out_of_tolerance"
    assert unknown.returncode == 1
    for output in (result.stdout, as_json.stdout):
        assert headers["webhook-signature"].removeprefix("v1,") not in output
        assert TEST_SECRET not in output


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
