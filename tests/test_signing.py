"""Tests for receiver.signing: the ``standard`` and ``stripe`` schemes (SPEC §2, §9).

Expected signatures are computed here from the spec text (``hand_standard``/``hand_stripe``)
or come from the ``standardwebhooks`` reference library, never from the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook
from starlette.datastructures import Headers

from receiver.errors import (
    DeliveryRejected,
    InvalidSignature,
    InvalidTimestamp,
    MissingSignatureHeader,
    TimestampOutOfTolerance,
)
from receiver.signing import (
    Scheme,
    Verified,
    Verifier,
    key_fingerprint,
    key_warnings,
    parse_keys,
    sign_standard,
    sign_stripe,
)

NOW = 1_700_000_000
KEYS = [b"first-key-material-24byt", b"second-key-material-24by", b"unknown-key-material-24b"]
SECRETS = ["whsec_" + base64.b64encode(key).decode() for key in KEYS]
FP0 = key_fingerprint(SECRETS[0])
BODY = b'{"id":"evt_1","type":"generation.succeeded","data":{"id":"task_1"}}'
BODIES = [BODY, b"", b"\xff\xfe\x00 not utf-8 \x80", b"x" * 100_000]
BODY_IDS = ["json", "empty", "not-utf8", "large"]


def hand_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks v1 straight from the spec: HMAC-SHA256 over ``id.ts.body``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def hand_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC of ``t.body`` keyed with the whole secret string."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def headers(signature: str, msg_id: str = "msg_1", timestamp: int | str = NOW) -> dict[str, str]:
    stamp = str(timestamp)
    return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


def standard(*secrets: str, tolerance: int = 300) -> Verifier:
    return Verifier(Scheme.STANDARD, list(secrets or SECRETS[:1]), tolerance_seconds=tolerance)


def stripe(*secrets: str, header: str = "Rivya-Signature") -> Verifier:
    return Verifier(Scheme.STRIPE, list(secrets), signature_header=header)


def ed25519_pair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, "whpk_" + base64.b64encode(raw).decode()


def sign_v1a(private: Ed25519PrivateKey, msg_id: str, timestamp: int, body: bytes) -> str:
    signature = private.sign(f"{msg_id}.{timestamp}.".encode() + body)
    return "v1a," + base64.b64encode(signature).decode()


class TestStandardVectors:
    def test_published_vector(self) -> None:
        """The example from the Svix/Standard Webhooks docs verifies (a fixed known answer)."""
        verifier = standard("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
        sent = headers("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", msg_id, timestamp)

        actual = verifier.verify(sent, b'{"test": 2432232314}', now=timestamp)

        assert (
            Verified(msg_id, timestamp, key_fingerprint("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
            == actual
        )

    @pytest.mark.parametrize("body", BODIES, ids=BODY_IDS)
    def test_hand_signed_body_verifies(self, body: bytes) -> None:
        """A signature computed from the spec verifies, whatever the body bytes (even non-UTF-8)."""
        sent = headers(hand_standard(KEYS[0], "msg_1", NOW, body))

        assert Verified("msg_1", NOW, FP0) == standard().verify(sent, body, now=NOW)

    @pytest.mark.parametrize("body", BODIES, ids=BODY_IDS)
    def test_sign_standard_matches_spec(self, body: bytes) -> None:
        """sign_standard produces exactly the spec's ``v1,<base64 HMAC>`` value."""
        assert hand_standard(KEYS[0], "msg_9", NOW, body) == sign_standard(
            SECRETS[0], "msg_9", NOW, body
        )

    def test_sign_standard_rejects_public_key(self) -> None:
        """A whpk_ key cannot sign: ValueError instead of a signature with garbage key bytes."""
        _, public = ed25519_pair()

        with pytest.raises(ValueError, match="whsec_"):
            sign_standard(public, "msg_1", NOW, BODY)

    @pytest.mark.parametrize(
        "entries",
        ["v2,{good} v1,{good}", "v1,AAAA v1,{good}", "garbage v1,{good}", "  v1,{good}  "],
        ids=["unknown-version-first", "wrong-sig-first", "garbage-first", "extra-spaces"],
    )
    def test_valid_entry_among_others(self, entries: str) -> None:
        """Unknown versions and bad entries are skipped; a valid v1 later in the list wins."""
        good = hand_standard(KEYS[0], "msg_1", NOW, BODY).removeprefix("v1,")
        sent = headers(entries.replace("{good}", good))

        assert Verified("msg_1", NOW, FP0) == standard().verify(sent, BODY, now=NOW)


class TestReferenceLibrary:
    def test_reference_signature_verifies_here(self) -> None:
        """A signature made by the standardwebhooks package verifies with our Verifier."""
        now = int(time.time())
        signature = Webhook(SECRETS[0]).sign(
            "msg_ref", datetime.fromtimestamp(now, UTC), BODY.decode()
        )

        actual = standard().verify(headers(signature, "msg_ref", now), BODY, now=now)

        assert Verified("msg_ref", now, FP0) == actual

    def test_our_signature_verifies_there(self) -> None:
        """sign_standard output verifies with the standardwebhooks package (it raises if not)."""
        now = int(time.time())
        signature = sign_standard(SECRETS[0], "msg_ours", now, BODY)

        actual = Webhook(SECRETS[0]).verify(BODY, headers(signature, "msg_ours", now))

        expected = {"id": "evt_1", "type": "generation.succeeded", "data": {"id": "task_1"}}
        assert expected == actual


class TestEd25519:
    @pytest.mark.parametrize("body", BODIES, ids=BODY_IDS)
    def test_v1a_verifies(self, body: bytes) -> None:
        """A v1a Ed25519 signature verifies against its whpk_ public key."""
        private, public = ed25519_pair()
        sent = headers(sign_v1a(private, "msg_1", NOW, body))

        assert Verified("msg_1", NOW, key_fingerprint(public)) == standard(public).verify(
            sent, body, now=NOW
        )

    @pytest.mark.parametrize("case", ["other-key", "hmac-as-v1a", "v1a-as-v1"], ids=str)
    def test_rejected(self, case: str) -> None:
        """v1a checks only against the right whpk_ key and only under its own label."""
        private, public = ed25519_pair()
        v1a = sign_v1a(private, "m", NOW, BODY)
        hmac_only = hand_standard(KEYS[0], "m", NOW, BODY).removeprefix("v1,")
        verifier, entry = {
            "other-key": (standard(SECRETS[0], ed25519_pair()[1]), v1a),
            "hmac-as-v1a": (standard(SECRETS[0], public), f"v1a,{hmac_only}"),
            "v1a-as-v1": (standard(SECRETS[0], public), v1a.replace("v1a,", "v1,")),
        }[case]

        with pytest.raises(InvalidSignature):
            verifier.verify(headers(entry, "m"), BODY, NOW)

    def test_mixed_key_kinds(self) -> None:
        """With a whsec_ and a whpk_ key configured, a v1 and a v1a signature each verify."""
        private, public = ed25519_pair()
        verifier = standard(SECRETS[0], public)

        by_hmac = verifier.verify(headers(hand_standard(KEYS[0], "m", NOW, BODY), "m"), BODY, NOW)
        by_ed25519 = verifier.verify(headers(sign_v1a(private, "m", NOW, BODY), "m"), BODY, NOW)

        assert (Verified("m", NOW, FP0), Verified("m", NOW, key_fingerprint(public))) == (
            by_hmac,
            by_ed25519,
        )

    def test_cannot_sign(self) -> None:
        """A verifier holding only whpk_ keys reports that it cannot sign."""
        _, public = ed25519_pair()

        expected = (False, True)
        assert expected == (standard(public).can_sign, standard(SECRETS[0]).can_sign)


class TestHeaderLookup:
    @pytest.mark.parametrize("prefix", ["svix", "webhook"], ids=["svix", "webhook"])
    def test_alias_headers_verify(self, prefix: str) -> None:
        """svix-id / svix-timestamp / svix-signature work like the webhook-* headers."""
        sent = {
            f"{prefix}-id": "msg_1",
            f"{prefix}-timestamp": str(NOW),
            f"{prefix}-signature": hand_standard(KEYS[0], "msg_1", NOW, BODY),
        }

        assert Verified("msg_1", NOW, FP0) == standard().verify(sent, BODY, now=NOW)

    def test_starlette_headers_any_case(self) -> None:
        """With the app's case-insensitive Headers, mixed-case names on the wire are found."""
        signature = hand_standard(KEYS[0], "msg_1", NOW, BODY)
        sent = Headers(
            {"Webhook-ID": "msg_1", "WEBHOOK-TIMESTAMP": str(NOW), "Webhook-Signature": signature}
        )

        assert Verified("msg_1", NOW, FP0) == standard().verify(sent, BODY, now=NOW)


class TestStripe:
    def test_sign_stripe_matches_spec(self) -> None:
        """sign_stripe is ``t=<unix>,v1=<hex HMAC of t.body keyed by the whole secret>``."""
        assert f"t={NOW},v1={hand_stripe('sk_any', NOW, BODY)}" == sign_stripe("sk_any", NOW, BODY)

    @pytest.mark.parametrize("body", BODIES, ids=BODY_IDS)
    def test_verifies_without_event_id(self, body: bytes) -> None:
        """A correct header verifies; the event id is left to the body (None)."""
        sent = {"rivya-signature": f"t={NOW},v1={hand_stripe(SECRETS[0], NOW, body)}"}

        assert Verified(None, NOW, key_fingerprint(SECRETS[0], Scheme.STRIPE)) == stripe(
            SECRETS[0]
        ).verify(sent, body, now=NOW)

    def test_keyed_with_whole_string_not_decoded(self) -> None:
        """A whsec_ secret is used as its literal bytes, not base64-decoded as in ``standard``."""
        decoded = hmac.new(KEYS[0], f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()

        with pytest.raises(InvalidSignature):
            stripe(SECRETS[0]).verify({"rivya-signature": f"t={NOW},v1={decoded}"}, BODY, NOW)

    def test_custom_header_name(self) -> None:
        """The configured header name is read (case-insensitively configured)."""
        sent = {"x-acme-sig": f"t={NOW},v1={hand_stripe('s', NOW, BODY)}"}

        assert Verified(None, NOW, key_fingerprint("s", Scheme.STRIPE)) == stripe(
            "s", header="X-Acme-Sig"
        ).verify(sent, BODY, NOW)

    @pytest.mark.parametrize("header", ["Rivya-Signature", "X-Acme-Sig"])
    def test_missing_header_names_the_configured_one(self, header: str) -> None:
        """Without its header, a stripe delivery is told the one header name it needs, as
        configured (not the Standard Webhooks three)."""
        sent = {"webhook-signature": "v1,AAAA"}  # a sender on the other scheme

        with pytest.raises(MissingSignatureHeader) as caught:
            stripe("s", header=header).verify(sent, BODY, NOW)

        assert {"error": "missing_signature_header", "expected": [header]} == (
            caught.value.payload()
        )

    @pytest.mark.parametrize(
        "template",
        ["t={t},v1={bad},v1={good}", "v1={good},t={t}", "t={t}, v0={bad}, v1={GOOD}"],
        ids=["second-v1", "t-last", "spaces-v0-uppercase"],
    )
    def test_multiple_entries(self, template: str) -> None:
        """Any v1 entry may match, in any order; v0 is ignored and hex case does not matter."""
        good = hand_stripe("s", NOW, BODY)
        value = template.format(t=NOW, bad="0" * 64, good=good, GOOD=good.upper())

        assert Verified(None, NOW, key_fingerprint("s", Scheme.STRIPE)) == stripe("s").verify(
            {"rivya-signature": value}, BODY, NOW
        )

    @pytest.mark.parametrize(
        ("value", "error"),
        [
            (None, MissingSignatureHeader),
            ("", MissingSignatureHeader),
            ("v1={good}", InvalidTimestamp),
            ("t=soon,v1={good}", InvalidTimestamp),
            ("t={t}", InvalidSignature),
            ("t={t},v1=zz", InvalidSignature),
            ("t={t},v0={good}", InvalidSignature),
            ("t={t},v1=\u00e9\u00e9", InvalidSignature),
            ("t={t},v1=\udcff", InvalidSignature),
        ],
        ids=["absent", "empty", "no-t", "bad-t", "no-v1", "not-hex", "v0-only", "non-ascii",
             "surrogate"],
    )  # fmt: skip
    def test_rejections(self, value: str | None, error: type[DeliveryRejected]) -> None:
        """Each malformed stripe header becomes its own rejection, never a ValueError."""
        sent = {} if value is None else {"rivya-signature": value}
        sent = {k: v.format(t=NOW, good=hand_stripe("s", NOW, BODY)) for k, v in sent.items()}

        with pytest.raises(error):
            stripe("s").verify(sent, BODY, now=NOW)


class TestRotation:
    @pytest.mark.parametrize("scheme", list(Scheme), ids=[s.value for s in Scheme])
    @pytest.mark.parametrize("index", [0, 1], ids=["old-key", "new-key"])
    def test_either_key(self, scheme: Scheme, index: int) -> None:
        """With two keys configured, a signature by either verifies, in both schemes."""
        if scheme is Scheme.STANDARD:
            sent = headers(hand_standard(KEYS[index], "m", NOW, BODY), "m")
        else:
            sent = {"rivya-signature": f"t={NOW},v1={hand_stripe(SECRETS[index], NOW, BODY)}"}

        # The answer names the key that matched, so ops can follow a rotation.
        expected = Verified(
            "m" if scheme is Scheme.STANDARD else None,
            NOW,
            key_fingerprint(SECRETS[index], scheme),
        )
        assert expected == Verifier(scheme, SECRETS[:2]).verify(sent, BODY, NOW)

    def test_third_key_rejected(self) -> None:
        """A signature by a key that is not configured is rejected, in both schemes."""
        sent = headers(hand_standard(KEYS[2], "m", NOW, BODY), "m")
        stripe_sent = {"rivya-signature": f"t={NOW},v1={hand_stripe(SECRETS[2], NOW, BODY)}"}

        with pytest.raises(InvalidSignature):
            standard(*SECRETS[:2]).verify(sent, BODY, NOW)
        with pytest.raises(InvalidSignature):
            stripe(*SECRETS[:2]).verify(stripe_sent, BODY, NOW)


class TestTolerance:
    @pytest.mark.parametrize("scheme", list(Scheme), ids=[s.value for s in Scheme])
    @pytest.mark.parametrize("tolerance", [None, 60], ids=["default-300", "custom-60"])
    @pytest.mark.parametrize(
        ("sign", "extra", "accepted"),
        [(-1, 0, True), (1, 0, True), (-1, 1, False), (1, 1, False), (0, 0, True)],
        ids=["past-edge", "future-edge", "past-beyond", "future-beyond", "now"],
    )
    def test_edges(
        self, scheme: Scheme, tolerance: int | None, sign: int, extra: int, accepted: bool
    ) -> None:
        """Exactly tolerance seconds either way is accepted; one second more is rejected."""
        options = {} if tolerance is None else {"tolerance_seconds": tolerance}
        timestamp = NOW + sign * ((tolerance or 300) + extra)
        if scheme is Scheme.STANDARD:
            verifier = Verifier(scheme, SECRETS[:1], **options)
            sent = headers(hand_standard(KEYS[0], "m", timestamp, BODY), "m", timestamp)
        else:
            verifier = Verifier(scheme, ["s"], **options)
            sent = {"rivya-signature": f"t={timestamp},v1={hand_stripe('s', timestamp, BODY)}"}

        if accepted:
            assert timestamp == verifier.verify(sent, BODY, now=NOW).timestamp
        else:
            with pytest.raises(TimestampOutOfTolerance):
                verifier.verify(sent, BODY, now=NOW)


class TestStandardRejections:
    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    @pytest.mark.parametrize("how", ["absent", "empty"], ids=str)
    def test_missing_header(self, missing: str, how: str) -> None:
        """Each of the three headers, absent or empty, is a MissingSignatureHeader (400)."""
        sent = headers(hand_standard(KEYS[0], "msg_1", NOW, BODY))
        if how == "absent":
            del sent[missing]
        else:
            sent[missing] = ""

        with pytest.raises(MissingSignatureHeader) as caught:
            standard().verify(sent, BODY, now=NOW)

        expected = ("webhook-id", "webhook-timestamp", "webhook-signature")
        assert expected == caught.value.expected
        assert {"error": "missing_signature_header", "expected": list(expected)} == (
            caught.value.payload()
        )

    @pytest.mark.parametrize(
        "timestamp",
        ["soon", "-1700000000", "1700000000.0", "1.7e9", "\u0661\u0667" * 5, "9" * 13, "0x1"],
        ids=["word", "negative", "decimal", "exponent", "arabic-digits", "too-long", "hex"],
    )
    def test_malformed_timestamp(self, timestamp: str) -> None:
        """A timestamp that is not plain unix seconds is an InvalidTimestamp."""
        with pytest.raises(InvalidTimestamp):
            standard().verify(headers("v1,AAAA", timestamp=timestamp), BODY, now=NOW)

    @pytest.mark.parametrize(
        "signature",
        ["v1,!!!not-base64!!!", "v1,AAA", "v1", "v1,", "garbage", "v2,{good}", "v1a,{good}",
         "v1,{good}=", "v1 {good}", ",,,", " ", "v1,\udcff", "v1,{good}".replace(",", ";")],
        ids=["bad-base64", "bad-padding", "no-comma", "empty-sig", "word", "v2", "v1a-label",
             "extra-padding", "space-not-comma", "commas", "space", "surrogate", "semicolon"],
    )  # fmt: skip
    def test_garbage_signature(self, signature: str) -> None:
        """Malformed or unknown-version entries are an InvalidSignature, never a ValueError."""
        good = hand_standard(KEYS[0], "msg_1", NOW, BODY).removeprefix("v1,")

        with pytest.raises(InvalidSignature):
            standard().verify(headers(signature.replace("{good}", good)), BODY, now=NOW)

    @pytest.mark.parametrize(
        "msg_id", ["msg 1", "msg_1\n", "m" * 256, "msg_\u00e9", "msg\t1"],
        ids=["space", "trailing-newline", "too-long", "non-ascii", "tab"],
    )  # fmt: skip
    def test_malformed_id(self, msg_id: str) -> None:
        """An id outside printable ASCII (1-255 chars) is rejected even if correctly signed."""
        sent = headers(hand_standard(KEYS[0], msg_id, NOW, BODY), msg_id)

        with pytest.raises(InvalidSignature):
            standard().verify(sent, BODY, now=NOW)

    @pytest.mark.parametrize(
        ("field", "value"),
        [("body", b'{"id":"evt_2"}'), ("webhook-id", "msg_2"), ("webhook-timestamp", NOW + 1)],
        ids=["body", "id", "timestamp"],
    )
    def test_tampering(self, field: str, value: bytes | str | int) -> None:
        """Changing the body, the id or the timestamp after signing breaks the signature."""
        sent = headers(hand_standard(KEYS[0], "msg_1", NOW, BODY))
        body = value if isinstance(value, bytes) else BODY
        if field != "body":
            sent[field] = str(value)

        with pytest.raises(InvalidSignature):
            standard().verify(sent, body, now=NOW)


PUBLIC = ed25519_pair()[1]
HEADER_NAMES = ["webhook-id", "webhook-timestamp", "webhook-signature", "svix-id",
                "svix-timestamp", "svix-signature", "rivya-signature"]  # fmt: skip
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=80)
NEAR_VALID = st.one_of(
    ANY_TEXT,
    st.integers(NOW - 400, NOW + 400).map(str),
    st.builds(
        lambda version, raw: f"{version},{base64.b64encode(raw).decode()}",
        st.sampled_from(["v1", "v1a", "v2", ""]),
        st.binary(max_size=80),
    ),
    st.builds(lambda t, sig: f"t={t},v1={sig}", st.integers(NOW - 400, NOW + 400), ANY_TEXT),
)


class TestNeverCrashes:
    @pytest.mark.parametrize("scheme", list(Scheme), ids=[s.value for s in Scheme])
    @given(sent=st.dictionaries(st.sampled_from(HEADER_NAMES), NEAR_VALID), body=st.binary())
    def test_any_input(self, scheme: Scheme, sent: dict[str, str], body: bytes) -> None:
        """Arbitrary headers and body give Verified or a DeliveryRejected, nothing else."""
        verifier = Verifier(scheme, [SECRETS[0], PUBLIC] if scheme is Scheme.STANDARD else ["s"])

        try:
            result = verifier.verify(sent, body, now=NOW)
        except DeliveryRejected:
            return
        assert isinstance(result, Verified)


class TestParseKeys:
    @pytest.mark.parametrize(
        "raw", ["{0} {1}", "{0},{1}", " {0} ,\n {1} ", "{0},,{1},"],
        ids=["space", "comma", "mixed-whitespace", "empty-parts"],
    )  # fmt: skip
    def test_separators(self, raw: str) -> None:
        """Keys are split on spaces and commas, empty parts dropped."""
        assert SECRETS[:2] == parse_keys(Scheme.STANDARD, raw.format(*SECRETS))

    @pytest.mark.parametrize(
        ("raw", "position", "fragment"),
        [("{0} c2VjcmV0LXRleHQ=", 2, "must start with"),
         ("whsec_c2VjcmV0LXRleHQ!! {0}", 1, "character outside base64"),
         ("{0} {0} whsec_", 3, "no key material"),
         ("whpk_c2VjcmV0LXRleHQ=", 1, "11 bytes; an Ed25519 public key is 32"),
         ("whpk_!!c2VjcmV0LXRleHQ", 1, "character outside base64")],
        ids=["no-prefix", "bad-base64", "empty-material", "short-public-key", "bad-public-key"],
    )  # fmt: skip
    def test_errors_name_position_not_key(self, raw: str, position: int, fragment: str) -> None:
        """A bad standard key is a ValueError naming its position, without the key text."""
        with pytest.raises(ValueError, match=fragment) as caught:
            parse_keys(Scheme.STANDARD, raw.format(SECRETS[0]))

        message = str(caught.value)
        expected = (True, False, False)
        assert expected == (
            message.startswith(f"key {position}:"),
            "c2VjcmV0LXRleHQ" in message,
            SECRETS[0].removeprefix("whsec_") in message,
        )

    @pytest.mark.parametrize("raw", ["anything", "whsec_!!!", "whpk_short"], ids=str)
    def test_stripe_accepts_any_string(self, raw: str) -> None:
        """For stripe every non-empty string is a key, prefix or not."""
        assert [raw] == parse_keys(Scheme.STRIPE, raw)

    def test_verifier_rejects_bad_key(self) -> None:
        """Building a standard Verifier from a bad key fails early, not per request."""
        with pytest.raises(ValueError, match="key 1"):
            Verifier(Scheme.STANDARD, ["not-a-key"])


def reference_signature(secret: str | bytes, msg_id: str, body: bytes) -> str:
    """A webhook-signature made by the standardwebhooks library, at NOW."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(NOW, tz=UTC), body.decode())


# 33 bytes whose base64 uses both ``+`` and ``/`` (standard) or ``-`` and ``_`` (URL-safe).
ODD_KEY = bytes([0xFB, 0xEF, 0xBE, 0xFF, 0xFF, 0xFF] * 5 + [1, 2, 3])
PLAIN_KEY = b"receiver-unpadded-key-16+"  # 25 bytes: base64 needs one '=' of padding


class TestKeyFormats:
    """Keys after ``whsec_`` in every base64 form a sender may write them in."""

    def test_unpadded_secret_verifies_reference_signature(self) -> None:
        """An unpadded whsec_ secret verifies a delivery the standardwebhooks library signed
        with the very same secret text."""
        padded = base64.b64encode(PLAIN_KEY).decode()
        assert padded.endswith("=")
        secret = "whsec_" + padded.rstrip("=")
        signature = reference_signature(secret, "msg_unpadded", BODY)

        verified = standard(secret).verify(headers(signature, "msg_unpadded"), BODY, now=NOW)

        assert Verified("msg_unpadded", NOW, key_fingerprint(secret)) == verified

    def test_url_safe_secret_verifies_a_signature_with_its_bytes(self) -> None:
        """A URL-safe whsec_ secret (padded or not) is decoded as URL-safe: it verifies a
        delivery the standardwebhooks library signed with the bytes it encodes."""
        url_safe = base64.urlsafe_b64encode(ODD_KEY).decode()
        assert "-" in url_safe
        assert "_" in url_safe
        signature = reference_signature(ODD_KEY, "msg_urlsafe", BODY)

        for secret in ("whsec_" + url_safe, "whsec_" + url_safe.rstrip("=")):
            verified = standard(secret).verify(headers(signature, "msg_urlsafe"), BODY, now=NOW)
            assert Verified("msg_urlsafe", NOW, key_fingerprint(secret)) == verified

    def test_every_form_of_one_key_has_one_fingerprint(self) -> None:
        """The fingerprint names the key material, not its spelling; other keys differ."""
        forms = [
            base64.b64encode(ODD_KEY).decode(),
            base64.b64encode(ODD_KEY).decode().rstrip("="),
            base64.urlsafe_b64encode(ODD_KEY).decode(),
        ]
        fingerprints = {key_fingerprint("whsec_" + form) for form in forms}
        assert len(fingerprints) == 1
        [fingerprint] = fingerprints
        assert re.fullmatch(r"fp_[0-9a-f]{8}", fingerprint)
        assert fingerprint != key_fingerprint(SECRETS[0])
        # A stripe secret signs with its own bytes, so that is what is fingerprinted.
        assert key_fingerprint("s", Scheme.STRIPE) == "fp_" + hashlib.sha256(b"s").hexdigest()[:8]

    def test_every_form_of_one_key_signs_alike(self) -> None:
        """Standard, unpadded and URL-safe spellings of one key are the same key."""
        forms = [
            base64.b64encode(ODD_KEY).decode(),
            base64.b64encode(ODD_KEY).decode().rstrip("="),
            base64.urlsafe_b64encode(ODD_KEY).decode(),
            base64.urlsafe_b64encode(ODD_KEY).decode().rstrip("="),
        ]
        expected = hand_standard(ODD_KEY, "msg_1", NOW, BODY)

        assert [expected] * 4 == [sign_standard("whsec_" + f, "msg_1", NOW, BODY) for f in forms]

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            ("whsec_", "key 1: whsec_ has no key material after the prefix"),
            ("whsec_==", "key 1: whsec_ has no key material after the prefix"),
            ("whpk_", "key 1: whpk_ has no key material after the prefix"),
            ("whsec_c2Vj*cmV0", "key 1: whsec_ key has a character outside base64 "
             "(A-Z a-z 0-9 + / or - _) at position 5 after the prefix"),
            ("whsec_c2Vjcm=V0", "key 1: whsec_ key has '=' before its end "
             "(padding goes only at the end)"),
            ("whsec_c2V+cm_0", "key 1: whsec_ key mixes standard (+ /) and URL-safe (- _) base64"),
            ("whsec_c2VjcmV0L", "key 1: whsec_ key has a length base64 cannot have "
             "(a character too many?)"),
            ("whpk_" + base64.b64encode(b"k" * 31).decode(),
             "key 1: whpk_ key is 31 bytes; an Ed25519 public key is 32"),
        ],
        ids=["whsec-alone", "only-padding", "whpk-alone", "bad-character", "inner-padding",
             "mixed-alphabets", "impossible-length", "short-public-key"],
    )  # fmt: skip
    def test_each_malformed_form_has_its_message(self, key: str, message: str) -> None:
        """Each way a key can be malformed gets its own message, which never echoes the key."""
        with pytest.raises(ValueError, match=r"^key 1: ") as caught:
            parse_keys(Scheme.STANDARD, key)

        assert message == str(caught.value)

    @pytest.mark.parametrize(
        ("scheme", "key", "expected"),
        [
            (Scheme.STANDARD, "whsec_YQ", ["key 1: only 1 byte of key material; use at least "
                                           "16 (`receiver gen-secret` makes 32)"]),
            (Scheme.STANDARD, "whsec_" + base64.b64encode(b"k" * 15).decode(),
             ["key 1: only 15 bytes of key material; use at least 16 "
              "(`receiver gen-secret` makes 32)"]),
            (Scheme.STANDARD, "whsec_" + base64.b64encode(b"k" * 16).decode(), []),
            (Scheme.STANDARD, "whpk_" + base64.b64encode(b"k" * 32).decode(), []),
            (Scheme.STRIPE, "short", ["key 1: only 5 bytes of key material; use at least 16 "
                                      "(`receiver gen-secret` makes 32)"]),
            (Scheme.STRIPE, "whsec_longer-than-16", []),
        ],
        ids=["1-byte", "15-bytes", "16-bytes", "public-key", "stripe-short", "stripe-long"],
    )  # fmt: skip
    def test_short_keys_are_warned_about(
        self, scheme: Scheme, key: str, expected: list[str]
    ) -> None:
        """A shared key under 16 bytes is valid but gets a warning naming its position."""
        assert [key] == parse_keys(scheme, key)

        assert expected == key_warnings(scheme, [key])
