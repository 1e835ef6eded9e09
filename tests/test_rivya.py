"""Tests for receiver.rivya: from a delivery body to the normalized record (SPEC §2, §5)."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.models import STATUS_RANK, ReasonCode, Record
from receiver.rivya import (
    MAX_RESULT_URLS,
    MAX_TEXT_LENGTH,
    MappedEvent,
    UnmappableEvent,
    event_type_of,
    find_generation,
    identify,
    map_event,
    parse_body,
)

RECEIVED_AT = datetime(2026, 5, 10, 0, 5, tzinfo=UTC)
APPLIED_AT = datetime(2030, 1, 1, tzinfo=UTC)
# SPEC §2, verbatim.
EXAMPLE = (
    b'{"id": "evt_01H...", "type": "generation.succeeded", "api_version": "2026-05-11",'
    b' "created_at": "2026-05-10T00:01:00.000Z",'
    b' "data": {"id": "task_public_id", "status": "succeeded", "model": "z-image",'
    b' "reserved_credits": 1, "final_credits": 1, "client_request_id": "order-123-preview",'
    b' "created_at": "2026-05-10T00:00:00.000Z", "updated_at": "2026-05-10T00:01:00.000Z",'
    b' "result": {"primary_url": "https://media.example/result.png",'
    b' "urls": ["https://media.example/result.png"]}, "error": null}}'
)
GENERATION: dict[str, Any] = orjson.loads(EXAMPLE)["data"]
EXAMPLE_RECORD = Record(
    record_key="task_public_id",
    status="succeeded",
    source_updated_at=datetime(2026, 5, 10, 0, 1, tzinfo=UTC),
    last_event_id="msg_1",
    client_request_id="order-123-preview",
    model="z-image",
    primary_url="https://media.example/result.png",
    result_urls=("https://media.example/result.png",),
    error_code=None,
    error_message=None,
    reserved_credits=1,
    final_credits=1,
    applied_at=APPLIED_AT,
)
FAILED = {
    "id": "task_f",
    "status": "failed",
    "model": "z-video",
    "reserved_credits": 5,
    "final_credits": 0,
    "updated_at": "2026-05-10T00:02:00+00:00",
    "result": None,
    "error": {"code": "content_policy", "message": "prompt was rejected"},
}
ENVELOPES = {
    "data": lambda g: {"id": "evt_1", "type": "generation.succeeded", "data": g},
    "data.object": lambda g: {"id": "evt_1", "type": "generation.succeeded", "data": {"object": g}},
    "generation": lambda g: {"id": "evt_1", "type": "generation.succeeded", "generation": g},
    "bare": lambda g: g,
}


def mapped(document: dict[str, Any], event_id: str = "msg_1") -> MappedEvent:
    """map_event with the applied_at clock pinned, so whole records compare equal."""
    event = map_event(document, event_id, RECEIVED_AT)
    return dataclasses.replace(
        event, record=dataclasses.replace(event.record, applied_at=APPLIED_AT)
    )


def reason_of(document: dict[str, Any]) -> str:
    with pytest.raises(UnmappableEvent) as caught:
        map_event(document, "msg_1", RECEIVED_AT)
    assert caught.value.reason == str(caught.value)
    return caught.value.reason


class TestParseBody:
    def test_object(self) -> None:
        """A JSON object comes back as a dict."""
        expected = {"a": [1, None]}
        assert expected == parse_body(b'{"a": [1, null]}')

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"", "not_json"),
            (b"{", "not_json"),
            (b"\xff\xfe{}", "not_json"),
            (b"{'a': 1}", "not_json"),
            (b"NaN", "not_json"),
            (b'{"a": Infinity}', "not_json"),
            (b'{"final_credits": 1e400}', "invalid_number"),
            (b'{"final_credits": -1e400}', "invalid_number"),
            (b"[" * 1025 + b"]" * 1025, "too_deep"),
            (b"[]", "not_an_object"),
            (b'"text"', "not_an_object"),
            (b"42", "not_an_object"),
            (b"null", "not_an_object"),
        ],
        ids=["empty", "truncated", "not-utf8", "single-quotes", "nan", "infinity-literal",
             "overflows-double", "overflows-double-negative", "deeper-than-1024", "array",
             "string", "number", "null"],
    )  # fmt: skip
    def test_rejected(self, body: bytes, reason: str) -> None:
        """A body that is not a JSON object is Unmappable with its reason."""
        with pytest.raises(UnmappableEvent) as caught:
            parse_body(body)

        assert reason == caught.value.reason


class TestFindGeneration:
    @pytest.mark.parametrize("envelope", list(ENVELOPES), ids=list(ENVELOPES))
    def test_fallbacks(self, envelope: str) -> None:
        """The generation is found at data, data.object, generation, or as the body itself."""
        assert GENERATION is find_generation(ENVELOPES[envelope](GENERATION))

    def test_data_wins_over_generation(self) -> None:
        """When several places hold a generation, ``data`` is taken first."""
        other = {"id": "task_other", "status": "queued"}

        assert GENERATION is find_generation({"data": GENERATION, "generation": other})

    def test_complete_beats_partial(self) -> None:
        """A later complete generation is preferred to an earlier partial object."""
        document = {"data": {"status": "succeeded"}, "generation": GENERATION}

        assert GENERATION is find_generation(document)

    @pytest.mark.parametrize(
        "document",
        [{}, {"id": "evt_1", "type": "generation.succeeded"}, {"data": "text"}, {"data": []},
         {"data": {"object": None}}, {"generation": {"model": "z"}}],
        ids=["empty", "envelope-only", "data-string", "data-list", "object-null",
             "unrelated-fields"],
    )  # fmt: skip
    def test_nothing_found(self, document: dict[str, Any]) -> None:
        """A body with no generation-like object raises no_generation_object."""
        with pytest.raises(UnmappableEvent, match="no_generation_object"):
            find_generation(document)


class TestEventTypeOf:
    @pytest.mark.parametrize(
        ("document", "expected"),
        [
            ({"type": "generation.failed", "data": GENERATION}, "generation.failed"),
            ({"type": "generation.cancelled", "data": GENERATION}, "generation.cancelled"),
            ({"data": GENERATION}, "generation.succeeded"),
            (GENERATION, "generation.succeeded"),
            ({**GENERATION, "type": "image"}, "generation.succeeded"),
            ({**GENERATION, "status": "queued"}, "generation.queued"),
            ({"type": "x" * 300}, "x" * 100),
            ({"type": ""}, "unknown"),
            ({"type": 7}, "unknown"),
            ({}, "unknown"),
        ],
        ids=["declared", "unknown-type-kept", "no-type-uses-status", "bare", "bare-own-type",
             "bare-queued", "truncated", "empty-type", "non-string-type", "nothing"],
    )  # fmt: skip
    def test_type(self, document: dict[str, Any], expected: str) -> None:
        """The envelope type wins; a bare generation (or no type) derives it from the status."""
        assert expected == event_type_of(document)


class TestMapEvent:
    def test_spec_example(self) -> None:
        """The SPEC §2 example becomes exactly the expected record and type."""
        expected = MappedEvent("generation.succeeded", EXAMPLE_RECORD)

        assert expected == mapped(parse_body(EXAMPLE))

    @pytest.mark.parametrize("envelope", list(ENVELOPES), ids=list(ENVELOPES))
    def test_every_envelope_same_record(self, envelope: str) -> None:
        """Each envelope fallback yields the same record as the documented ``data`` form."""
        expected = EXAMPLE_RECORD
        assert expected == mapped(ENVELOPES[envelope](GENERATION)).record

    def test_failed_generation(self) -> None:
        """A failed generation keeps error code/message and final_credits 0; no result."""
        expected = Record(
            record_key="task_f",
            status="failed",
            source_updated_at=datetime(2026, 5, 10, 0, 2, tzinfo=UTC),
            last_event_id="msg_1",
            model="z-video",
            error_code="content_policy",
            error_message="prompt was rejected",
            reserved_credits=5,
            final_credits=0,
            applied_at=APPLIED_AT,
        )

        assert MappedEvent("generation.failed", expected) == mapped(
            {"type": "generation.failed", "data": FAILED}
        )

    def test_missing_client_request_id(self) -> None:
        """Without client_request_id the record is keyed by task id and the field is None."""
        generation = {k: v for k, v in GENERATION.items() if k != "client_request_id"}
        expected = dataclasses.replace(EXAMPLE_RECORD, client_request_id=None)

        assert expected == mapped({"data": generation}).record

    def test_unknown_fields_ignored(self) -> None:
        """Extra fields anywhere (envelope, generation, result, error) change nothing."""
        document = copy.deepcopy(orjson.loads(EXAMPLE))
        document["webhook_version"] = 3
        document["data"].update(seed=42, progress={"pct": 100}, nested=[{"id": 1}])
        document["data"]["result"]["thumbnails"] = ["https://media.example/t.png"]

        assert MappedEvent("generation.succeeded", EXAMPLE_RECORD) == mapped(document)

    @pytest.mark.parametrize(
        ("field", "value", "attribute", "expected"),
        [
            ("id", 12345, "record_key", "12345"),
            ("final_credits", 0.5, "final_credits", 0.5),
            ("final_credits", "1", "final_credits", None),
            ("final_credits", True, "final_credits", None),
            ("model", "", "model", None),
            ("model", 3, "model", None),
            ("result", {"urls": "https://x"}, "result_urls", ()),
            ("result", {"urls": ["https://a", 3, None]}, "result_urls", ("https://a",)),
            ("result", "https://x", "primary_url", None),
            ("error", "boom", "error_code", None),
            ("error", {"code": "timeout"}, "error_message", None),
        ],
        ids=["int-task-id", "float-credits", "string-credits", "bool-credits", "empty-model",
             "number-model", "urls-not-list", "urls-filtered", "result-not-object",
             "error-not-object", "error-without-message"],
    )  # fmt: skip
    def test_field_coercion(self, field: str, value: Any, attribute: str, expected: Any) -> None:
        """Odd field types are normalized or dropped, never crash the mapping."""
        record = mapped({"data": {**GENERATION, field: value}}).record

        assert expected == getattr(record, attribute)

    @pytest.mark.parametrize(
        ("document", "expected"),
        [
            ({"data": {**GENERATION, "id": None}}, "missing_task_id"),
            ({"data": {**GENERATION, "id": ""}}, "missing_task_id"),
            ({"data": {**GENERATION, "id": "t" * 256}}, "missing_task_id"),
            ({"data": {**GENERATION, "id": True}}, "missing_task_id"),
            ({"data": {"status": "succeeded", "model": "z"}}, "missing_task_id"),
            ({"type": "generation.succeeded", "status": "succeeded"}, "missing_task_id"),
            ({"data": {**GENERATION, "status": None}}, "missing_status"),
            ({"data": {**GENERATION, "status": ""}}, "missing_status"),
            ({"data": {"id": "task_1", "model": "z"}}, "missing_status"),
            ({"data": {**GENERATION, "status": "cancelled"}}, "unknown_status"),
            ({"data": {**GENERATION, "status": "SUCCEEDED"}}, "unknown_status"),
            ({"data": {**GENERATION, "updated_at": "yesterday"}}, "bad_updated_at"),
            ({"data": {**GENERATION, "updated_at": "0001-01-01T00:00:00+01:00"}},
             "bad_updated_at"),
            ({"id": "evt_1", "type": "generation.succeeded"}, "no_generation_object"),
        ],
        ids=["null-id", "empty-id", "long-id", "bool-id", "no-id-key", "bare-no-id",
             "null-status", "empty-status", "no-status-key", "unknown-status",
             "uppercase-status", "unparseable-time", "time-out-of-range", "no-generation"],
    )  # fmt: skip
    def test_unmappable_reason(self, document: dict[str, Any], expected: str) -> None:
        """Each kind of unmappable body raises UnmappableEvent with its own stable reason."""
        assert expected == reason_of(document)

    @pytest.mark.parametrize(
        ("generation_times", "envelope_time", "expected"),
        [
            ({"updated_at": "2026-05-10T00:03:00Z", "created_at": "2026-05-10T00:00:00Z"},
             "2026-05-10T00:04:00Z", datetime(2026, 5, 10, 0, 3, tzinfo=UTC)),
            ({"created_at": "2026-05-10T00:00:00Z"}, "2026-05-10T00:04:00Z",
             datetime(2026, 5, 10, 0, 0, tzinfo=UTC)),
            ({}, "2026-05-10T00:04:00Z", datetime(2026, 5, 10, 0, 4, tzinfo=UTC)),
            ({}, None, RECEIVED_AT),
            ({"updated_at": None, "created_at": ""}, None, RECEIVED_AT),
            ({"updated_at": "2026-05-10T02:00:00+02:00"}, None,
             datetime(2026, 5, 10, 0, 0, tzinfo=UTC)),
            ({"updated_at": "2026-05-10T00:00:00"}, None, datetime(2026, 5, 10, tzinfo=UTC)),
        ],
        ids=["updated-at", "created-at", "envelope-created-at", "received-at",
             "null-and-empty-skipped", "offset-to-utc", "naive-is-utc"],
    )  # fmt: skip
    def test_updated_at_fallbacks(
        self, generation_times: dict[str, Any], envelope_time: str | None, expected: datetime
    ) -> None:
        """source_updated_at: generation.updated_at, .created_at, envelope created_at, received."""
        generation = {"id": "task_1", "status": "processing", **generation_times}
        document: dict[str, Any] = {"type": "generation.processing", "data": generation}
        if envelope_time is not None:
            document["created_at"] = envelope_time

        assert expected == mapped(document).record.source_updated_at

    def test_event_id_is_last_event_id(self) -> None:
        """The event id passed in becomes the record's last_event_id."""
        expected = "msg_xyz"
        assert expected == mapped({"data": GENERATION}, event_id=expected).record.last_event_id


def with_values(**fields: Any) -> dict[str, Any]:
    """The SPEC example's envelope with some generation fields replaced."""
    return {"type": "generation.succeeded", "data": {**GENERATION, **fields}}


def unmappable(document: dict[str, Any]) -> UnmappableEvent:
    with pytest.raises(UnmappableEvent) as caught:
        map_event(document, "msg_1", RECEIVED_AT)
    return caught.value


class TestNumbersAndShapes:
    """A signed body is untrusted: values no store can hold make the event dead, with a
    reason, when it is mapped (at ingest and in the worker alike)."""

    @pytest.mark.parametrize(
        "value",
        [2**63, 2**64 - 1, 2**53 + 1, -1, -0.5, float("nan"), float("inf"), float("-inf"),
         1.8446744073709552e19],
        ids=["2^63", "2^64-1", "2^53+1", "negative", "negative-fraction", "nan", "inf",
             "-inf", "past-2^64-as-float"],
    )  # fmt: skip
    @pytest.mark.parametrize("field", ["reserved_credits", "final_credits"])
    def test_credits_out_of_range_are_invalid_number(self, field: str, value: float) -> None:
        """Credits outside 0..2^53 (or not finite) are invalid_number, naming the field only."""
        caught = unmappable(with_values(**{field: value}))

        assert ("invalid_number", ReasonCode.INVALID_NUMBER) == (caught.reason, caught.code)
        assert f"unmappable: invalid_number: {field} is outside 0..2^53" == caught.last_error

    @pytest.mark.parametrize(
        "value",
        [0, 2**53, 0.5, 1e-300, 2.0**53],
        ids=["zero", "2^53", "half", "tiny", "float-2^53"],
    )
    def test_credits_in_range_are_kept(self, value: float) -> None:
        """Every credit amount from 0 to 2^53 is kept exactly."""
        record = mapped(with_values(final_credits=value)).record

        assert value == record.final_credits

    def test_two_to_the_63_from_the_wire(self) -> None:
        """The body that killed the SQLite group writer (credits 2^63) is invalid_number."""
        body = EXAMPLE.replace(b'"final_credits": 1', b'"final_credits": 9223372036854775808')
        document = parse_body(body)

        assert ReasonCode.INVALID_NUMBER == unmappable(document).code

    @pytest.mark.parametrize(
        ("fields", "where"),
        [
            ({"model": "m" * (MAX_TEXT_LENGTH + 1)}, "model"),
            ({"client_request_id": "order\x00-1"}, "client_request_id"),
            ({"result": {"primary_url": "https://x/" + "a" * MAX_TEXT_LENGTH, "urls": []}},
             "result.primary_url"),
            ({"result": {"urls": ["https://x/a.png", "https://x/\x00"]}}, "result.urls"),
            ({"error": {"code": "x", "message": "e" * (MAX_TEXT_LENGTH + 1)}}, "error.message"),
            ({"error": {"code": "\x00", "message": "boom"}}, "error.code"),
        ],
        ids=["long-model", "nul-in-client-request-id", "long-primary-url", "nul-in-a-url",
             "long-error-message", "nul-in-error-code"],
    )  # fmt: skip
    def test_text_no_store_holds_is_invalid_text(self, fields: dict[str, Any], where: str) -> None:
        """Text longer than the bound, or holding NUL (PostgreSQL refuses it), is invalid_text."""
        caught = unmappable(with_values(**fields))

        assert ("invalid_text", ReasonCode.UNMAPPABLE) == (caught.reason, caught.code)
        assert caught.last_error.startswith(f"unmappable: invalid_text: {where}: ")

    def test_longest_text_is_kept(self) -> None:
        """A text of exactly the bound is kept whole."""
        model = "m" * MAX_TEXT_LENGTH
        assert model == mapped(with_values(model=model)).record.model

    def test_too_many_urls(self) -> None:
        """More result URLs than the bound is too_many_urls; the bound itself is kept."""
        urls = [f"https://media.example/{n}.png" for n in range(MAX_RESULT_URLS + 1)]
        caught = unmappable(with_values(result={"urls": urls}))
        kept = mapped(with_values(result={"urls": urls[:-1]})).record

        assert "too_many_urls" == caught.reason
        assert MAX_RESULT_URLS == len(kept.result_urls)

    def test_deep_unknown_fields_are_ignored(self) -> None:
        """Deep nesting in fields the record does not use (below orjson's 1024) maps fine."""
        deep = b"[" * 1000 + b"]" * 1000
        body = EXAMPLE[:-2] + b', "extra": ' + deep + b"}}"

        assert EXAMPLE_RECORD == mapped(parse_body(body)).record


REASONS = {"no_generation_object", "missing_task_id", "missing_status", "unknown_status",
           "bad_updated_at", "invalid_number", "invalid_text", "too_many_urls"}  # fmt: skip
JSON_KEYS = st.sampled_from(
    ["id", "status", "type", "data", "object", "generation", "result", "urls", "error",
     "code", "message", "updated_at", "created_at", "final_credits", "model", "primary_url"]
)  # fmt: skip
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    # orjson yields ints up to 2^64 - 1 and floats beyond; the credit bound is 2^53.
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([2**53, 2**53 + 1, 2**63, -1, 0]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["with\x00nul", "x" * (MAX_TEXT_LENGTH + 1)]),
    st.sampled_from(["queued", "processing", "succeeded", "failed", "2026-05-10T00:00:00Z"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(JSON_KEYS | st.text(max_size=5), inner)
    ),
    max_leaves=15,
)


def outcome(document: dict[str, Any]) -> MappedEvent | UnmappableEvent:
    try:
        return map_event(document, "msg_1", RECEIVED_AT)
    except UnmappableEvent as exc:
        return exc


def parsed(body: bytes) -> dict[str, Any] | UnmappableEvent:
    try:
        return parse_body(body)
    except UnmappableEvent as exc:
        return exc


class TestNeverCrashes:
    @given(document=st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=6))
    def test_any_document(self, document: dict[str, Any]) -> None:
        """Any JSON object maps to a valid MappedEvent or an UnmappableEvent, nothing else."""
        result = outcome(document)

        if isinstance(result, UnmappableEvent):
            assert result.reason in REASONS
        else:
            expected = (True, True)
            assert expected == (
                result.record.status in STATUS_RANK,
                0 < len(result.event_type) <= 100,
            )

    @given(body=st.binary() | JSON_VALUES.map(orjson.dumps))
    def test_any_body(self, body: bytes) -> None:
        """parse_body on any bytes returns a dict or an UnmappableEvent with a parse reason."""
        result = parsed(body)

        if isinstance(result, UnmappableEvent):
            assert result.reason in {"not_json", "not_an_object", "invalid_number", "too_deep"}
        else:
            assert isinstance(result, dict)


def identified(document: dict[str, Any]) -> tuple[str, str] | str:
    try:
        return identify(document)
    except UnmappableEvent as exc:
        return exc.reason


def mapped_identity(document: dict[str, Any]) -> tuple[str, str] | str:
    result = outcome(document)
    if isinstance(result, UnmappableEvent):
        return result.reason
    return result.event_type, result.record.record_key


class TestIdentify:
    """Ingest identifies an event without building its record; the worker maps it. The two
    must never disagree, or an event stored as pending would die in the worker (or the
    reverse), and its log line would name another record."""

    @given(document=st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=6))
    def test_agrees_with_map_event_on_any_document(self, document: dict[str, Any]) -> None:
        expected = mapped_identity(document)

        assert expected == identified(document)

    @pytest.mark.parametrize(
        "document",
        [
            {"data": GENERATION},
            {"type": "generation.failed", "data": FAILED},
            {"data": {**GENERATION, "updated_at": "yesterday"}},
            {"data": {**GENERATION, "status": "exploded"}},
            {"data": {"id": 42, "status": "queued"}},
            {"data": {**GENERATION, "final_credits": 2**63}},
            {"data": {**GENERATION, "model": "z\x00"}},
            {"data": {**GENERATION, "result": {"urls": ["u"] * (MAX_RESULT_URLS + 1)}}},
        ],
        ids=[
            "succeeded",
            "failed",
            "bad_updated_at",
            "unknown_status",
            "numeric_id",
            "invalid_number",
            "invalid_text",
            "too_many_urls",
        ],
    )
    def test_agrees_with_map_event_on_known_shapes(self, document: dict[str, Any]) -> None:
        expected = mapped_identity(document)

        assert expected == identified(document)
