"""Tests for receiver.settings: environment and TOML in, validated Settings out (SPEC §6, §9)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from receiver.errors import ConfigError
from receiver.redaction import Secret, mask_url
from receiver.settings import (
    KNOWN_VARIABLES,
    Settings,
    parse_duration,
    parse_size,
    unknown_variables,
)
from receiver.signing import Scheme
from tests.conftest import TEST_SECRET

# A recognisable word planted in every secret-bearing value: it must never be printed.
LEAK = "hunter2"
SECRET_2 = "whsec_" + base64.b64encode(f"second-{LEAK}-key-material".encode()).decode()
PUBLIC_KEY = "whpk_" + base64.b64encode(b"\x01" * 32).decode()
FERNET_KEY = Fernet.generate_key().decode()


def env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The minimal valid environment plus overrides."""
    return {"RECEIVER_WEBHOOK_SECRET": TEST_SECRET, "RECEIVER_DATA_DIR": str(tmp_path), **overrides}


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ)
    return str(caught.value)


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


BAD_VALUES = [
    ("RECEIVER_WEBHOOK_SECRET", f"{LEAK}-without-prefix"),
    ("RECEIVER_WEBHOOK_SECRET", f"whsec_{LEAK}!!"),
    ("RECEIVER_WEBHOOK_SECRET", f"{TEST_SECRET} whpk_{LEAK}"),
    ("RECEIVER_WEBHOOK_SECRET", " , "),
    ("RECEIVER_SIGNATURE_SCHEME", "hmac"),
    ("RECEIVER_SIGNATURE_HEADER", "Bad Header"),
    ("RECEIVER_TOLERANCE_SECONDS", "five"),
    ("RECEIVER_TOLERANCE_SECONDS", "0"),
    ("RECEIVER_REDIS_URL", f"http://:{LEAK}@cache:6379"),
    ("RECEIVER_REDIS_URL", f"redis://[{LEAK}"),
    ("RECEIVER_SINK", LEAK),
    ("RECEIVER_SINK", f"admin:{LEAK}@db/records"),
    ("RECEIVER_SINK", f"postgresql://[{LEAK}"),
    ("RECEIVER_MAX_BODY_BYTES", "1.5"),
    ("RECEIVER_MAX_BODY_BYTES", "0"),
    ("RECEIVER_RETENTION", "forever"),
    ("RECEIVER_RETENTION", "0s"),
    ("RECEIVER_ENCRYPTION_KEYS", LEAK),
    ("RECEIVER_ENCRYPTION_KEYS", f"{FERNET_KEY} {LEAK}"),
    ("RECEIVER_ENCRYPTION_KEYS", ","),
    ("RECEIVER_FORWARD_SECRET", LEAK),
    ("RECEIVER_FORWARD_SECRET", PUBLIC_KEY),
    ("RECEIVER_FORWARD_SECRET", f"{TEST_SECRET} {SECRET_2}"),
    ("RECEIVER_LOG_FORMAT", "xml"),
    ("RECEIVER_LOG_LEVEL", "loud"),
    ("RECEIVER_VISIBILITY_TIMEOUT", "0s"),
    ("RECEIVER_MAX_ATTEMPTS", "0"),
    ("RECEIVER_RETRY_BASE", "0"),
    ("RECEIVER_RETRY_MAX", "-1s"),
    ("RECEIVER_RETRY_FOR", "a day"),
    ("RECEIVER_RETRY_FOR", "0s"),
    ("RECEIVER_CIRCUIT_FAILURES", "0"),
    ("RECEIVER_SINK_TIMEOUT", "1.5s"),
    ("RECEIVER_SHUTDOWN_TIMEOUT", "never"),
    ("RECEIVER_SHUTDOWN_DRAIN", "later"),
    ("RECEIVER_WORKER_CONCURRENCY", "0"),
    ("RECEIVER_QUEUE_SHARDS", "1025"),
    ("RECEIVER_MAX_HEADER_BYTES", "32KB"),
    ("RECEIVER_MAX_HEADER_BYTES", "512"),
    ("RECEIVER_MAX_HEADER_BYTES", "2MiB"),
    ("RECEIVER_READ_TIMEOUT", "0s"),
    ("RECEIVER_READ_TIMEOUT", "a while"),
    ("RECEIVER_MAX_CONNECTIONS", "0"),
    ("RECEIVER_MAX_CONNECTIONS", "many"),
    ("RECEIVER_REDIS_TIMEOUT", "0s"),
    ("RECEIVER_REDIS_TIMEOUT", "soon"),
    ("RECEIVER_ALLOW_EVICTING_REDIS", "maybe"),
    ("RECEIVER_CONFIG", "/nonexistent/receiver.toml"),
    ("RECEIVER_WEBHOOK_SECRET_FILE", "/nonexistent/secret"),
]
BAD_IDS = [
    "secret-no-prefix", "secret-bad-base64", "secret-bad-public-key", "secret-only-commas",
    "scheme", "header", "tolerance-word", "tolerance-zero", "redis-http", "redis-unparseable",
    "sink-word", "sink-user-password", "sink-unparseable", "body-decimal", "body-zero",
    "retention-word", "retention-zero", "encryption-word", "encryption-second-bad",
    "encryption-only-comma", "forward-word", "forward-public-key", "forward-two-keys",
    "log-format", "log-level", "visibility-zero", "attempts-zero", "retry-base-zero",
    "retry-max-negative", "retry-for-words", "retry-for-zero", "circuit-zero",
    "sink-timeout-decimal", "shutdown-word", "drain-word", "concurrency-zero",
    "shards-too-many", "header-bytes-decimal-unit", "header-bytes-too-small",
    "header-bytes-too-large", "read-timeout-zero", "read-timeout-word", "connections-zero",
    "connections-word", "redis-timeout-zero", "redis-timeout-word", "allow-evicting-word",
    "config-missing", "secret-file-missing",
]  # fmt: skip


class TestDefaults:
    def test_minimal_environment(self, tmp_path: Path) -> None:
        """Only a secret set: every other setting takes its SPEC §6 default."""
        settings = Settings.from_env(env(tmp_path))
        source = settings.sources["rivya"]

        expected = (
            ["rivya"], Scheme.STANDARD, (Secret(TEST_SECRET),), "Rivya-Signature", 300,
            f"sqlite:///{tmp_path.resolve()}/records.db", None, True, 262_144, 30 * 86400,
            (), None, "json", "info", 2.0, False,
        )  # fmt: skip
        assert expected == (
            list(settings.sources), source.scheme, source.keys, source.signature_header,
            source.tolerance_seconds, settings.sink_url.reveal(), settings.redis_url,
            settings.embedded_redis, settings.max_body_bytes, settings.retention_seconds,
            settings.encryption_keys, settings.forward_secret, settings.log_format,
            settings.log_level, settings.redis_timeout_seconds, settings.allow_evicting_redis,
        )  # fmt: skip

    def test_retries_are_bounded_by_time_by_default(self, tmp_path: Path) -> None:
        """By default retries last a day after the first failure with no count limit, the
        backoff capped at 5 minutes, and 5 failed batches in a row open the circuit."""
        settings = Settings.from_env(env(tmp_path))
        assert (86400, None, 1.0, 300.0, 5) == (
            settings.retry_for_seconds, settings.max_attempts, settings.retry_base_seconds,
            settings.retry_max_seconds, settings.circuit_failures,
        )  # fmt: skip

    def test_http_bounds_defaults(self, tmp_path: Path) -> None:
        """Header budget 32 KiB and read deadline 10 s (SPEC §10), connection cap 1,000."""
        settings = Settings.from_env(env(tmp_path))

        assert (32_768, 10.0, 1_000) == (
            settings.max_header_bytes,
            settings.read_timeout_seconds,
            settings.max_connections,
        )

    def test_missing_secret(self, tmp_path: Path) -> None:
        """No webhook secret: the settings load (a worker or an operator needs none), but a
        process that verifies deliveries refuses to start, naming the variable; none is
        invented."""
        settings = Settings.from_env({"RECEIVER_DATA_DIR": str(tmp_path)})
        assert () == settings.sources["rivya"].keys
        with pytest.raises(ConfigError) as caught:
            settings.require_signing_keys()

        assert str(caught.value).startswith("RECEIVER_WEBHOOK_SECRET:")

    def test_signing_keys_present(self, tmp_path: Path) -> None:
        """With a secret, the signing requirement is met."""
        Settings.from_env(env(tmp_path)).require_signing_keys()


class TestValues:
    @pytest.mark.parametrize(
        ("variable", "value", "attribute", "expected"),
        [
            ("RECEIVER_TOLERANCE_SECONDS", "60", "tolerance", 60),
            ("RECEIVER_SIGNATURE_SCHEME", "STRIPE", "scheme", Scheme.STRIPE),
            ("RECEIVER_SIGNATURE_HEADER", "X-Acme-Signature", "header", "X-Acme-Signature"),
            ("RECEIVER_MAX_BODY_BYTES", "1024", "max_body_bytes", 1024),
            ("RECEIVER_RETENTION", "7d", "retention_seconds", 7 * 86400),
            ("RECEIVER_LOG_FORMAT", "console", "log_format", "console"),
            ("RECEIVER_LOG_LEVEL", "DEBUG", "log_level", "debug"),
            ("RECEIVER_VISIBILITY_TIMEOUT", "500ms", "visibility_timeout_seconds", 0.5),
            ("RECEIVER_MAX_ATTEMPTS", "3", "max_attempts", 3),
            ("RECEIVER_RETRY_FOR", "3d", "retry_for_seconds", 3 * 86400),
            ("RECEIVER_CIRCUIT_FAILURES", "2", "circuit_failures", 2),
            ("RECEIVER_QUEUE_SHARDS", "1024", "queue_shards", 1024),
            ("RECEIVER_MAX_HEADER_BYTES", "16384", "max_header_bytes", 16_384),
            ("RECEIVER_MAX_HEADER_BYTES", "64KiB", "max_header_bytes", 65_536),
            ("RECEIVER_MAX_HEADER_BYTES", "1m", "max_header_bytes", 1_048_576),
            ("RECEIVER_READ_TIMEOUT", "1500ms", "read_timeout_seconds", 1.5),
            ("RECEIVER_MAX_CONNECTIONS", "20000", "max_connections", 20_000),
            ("RECEIVER_REDIS_TIMEOUT", "750ms", "redis_timeout_seconds", 0.75),
            ("RECEIVER_ALLOW_EVICTING_REDIS", "TRUE", "allow_evicting_redis", True),
            ("RECEIVER_ALLOW_EVICTING_REDIS", "no", "allow_evicting_redis", False),
            ("RECEIVER_SINK", "log:", "sink", "log:"),
            ("RECEIVER_REDIS_URL", "rediss://:pw@h:6380/0", "redis", "rediss://:pw@h:6380/0"),
        ],
        ids=["tolerance", "scheme-any-case", "header", "max-body", "retention", "log-format",
             "log-level-any-case", "visibility-ms", "attempts", "retry-for", "circuit",
             "shards-max", "header-bytes", "header-bytes-kib", "header-bytes-mib",
             "read-timeout-ms", "connections", "redis-timeout-ms", "allow-evicting-true",
             "allow-evicting-no", "sink", "redis"],
    )  # fmt: skip
    def test_value_read(self, tmp_path: Path, variable: str, value: str, attribute: str,
                        expected: object) -> None:  # fmt: skip
        """Each variable's valid value lands, parsed, on the settings."""
        settings = Settings.from_env(env(tmp_path, **{variable: value}))
        source = settings.sources["rivya"]
        views = {
            "tolerance": source.tolerance_seconds,
            "scheme": source.scheme,
            "header": source.signature_header,
            "sink": settings.sink_url.reveal(),
            "redis": settings.redis_url.reveal() if settings.redis_url else None,
        }

        assert expected == views.get(attribute, getattr(settings, attribute, None))

    @pytest.mark.parametrize(("variable", "value"), BAD_VALUES, ids=BAD_IDS)
    def test_bad_value(self, tmp_path: Path, variable: str, value: str) -> None:
        """A bad value is one ConfigError line that starts with the variable, without secrets."""
        environ = env(tmp_path, **{variable: value})
        if variable == "RECEIVER_WEBHOOK_SECRET_FILE":
            del environ["RECEIVER_WEBHOOK_SECRET"]

        message = config_error(environ)

        expected = (True, False, False, False)
        assert expected == (
            message.startswith(f"{variable}:"),
            LEAK in message,
            TEST_SECRET.removeprefix("whsec_") in message,
            "\n" in message,
        )

    @pytest.mark.parametrize("variable", sorted({v for v, _ in BAD_VALUES}), ids=str)
    def test_validated_variables_are_known(self, variable: str) -> None:
        """Each variable with a validation rule is listed in KNOWN_VARIABLES (docs, deploy)."""
        assert variable in KNOWN_VARIABLES


class TestRetentionFloor:
    """The dedup entry must outlive the window in which the same signed bytes verify."""

    @pytest.mark.parametrize(
        ("tolerance", "retention", "minimum"),
        [("300", "3s", 605), ("300", "604s", 605), ("1", "6s", 7), ("60", "2m", 125)],
        ids=["default-tolerance-3s", "one-short", "tolerance-1s", "tolerance-60s"],
    )
    def test_too_short_is_refused(
        self, tmp_path: Path, tolerance: str, retention: str, minimum: int
    ) -> None:
        """A retention under twice the tolerance plus the 5 s margin stops start-up with one
        line naming RECEIVER_RETENTION, the tolerance and the minimum."""
        message = config_error(
            env(tmp_path, RECEIVER_TOLERANCE_SECONDS=tolerance, RECEIVER_RETENTION=retention)
        )

        assert message.startswith("RECEIVER_RETENTION: ")
        assert f"at least {minimum}s" in message
        assert f"{tolerance}s tolerance of source rivya, RECEIVER_TOLERANCE_SECONDS" in message
        assert "\n" not in message

    @pytest.mark.parametrize(
        ("tolerance", "retention"), [("300", "605s"), ("1", "7s"), ("300", "30d")], ids=str
    )
    def test_long_enough_is_accepted(self, tmp_path: Path, tolerance: str, retention: str) -> None:
        """The floor itself and anything above it start."""
        settings = Settings.from_env(
            env(tmp_path, RECEIVER_TOLERANCE_SECONDS=tolerance, RECEIVER_RETENTION=retention)
        )

        assert int(parse_duration(retention)) == settings.retention_seconds

    def test_longest_tolerance_of_any_source_counts(self, tmp_path: Path) -> None:
        """A config-file source with a longer tolerance raises the floor, and is named."""
        toml = f'[sources.slow]\nsecret = "{TEST_SECRET}"\ntolerance_seconds = 3600'
        config = write(tmp_path, "r.toml", toml)

        message = config_error(env(tmp_path, RECEIVER_CONFIG=config, RECEIVER_RETENTION="1h"))

        assert message.startswith("RECEIVER_RETENTION: 3600s would let a replay")
        assert "at least 7205s" in message
        assert "source slow, RECEIVER_CONFIG sources.slow.tolerance_seconds" in message


class TestWarnings:
    def test_none_for_good_keys(self, tmp_path: Path) -> None:
        """Keys of 16 bytes or more (and public keys) raise no warning."""
        settings = Settings.from_env(
            env(tmp_path, RECEIVER_WEBHOOK_SECRET=f"{TEST_SECRET} {PUBLIC_KEY}")
        )

        assert () == settings.warnings

    def test_short_keys_everywhere(self, tmp_path: Path) -> None:
        """A short key is a warning naming where it was set, for every source and the
        forward secret, never the key itself."""
        short = "whsec_" + base64.b64encode(LEAK.encode()).decode()
        config = write(tmp_path, "r.toml", f'[sources.acme]\nscheme = "stripe"\nsecret = "{LEAK}"')
        settings = Settings.from_env(
            env(
                tmp_path,
                RECEIVER_WEBHOOK_SECRET=f"{TEST_SECRET} {short}",
                RECEIVER_CONFIG=config,
                RECEIVER_SINK="https://hooks.example/in",
                RECEIVER_FORWARD_SECRET=short,
            )
        )
        advice = "use at least 16 (`receiver gen-secret` makes 32)"

        assert (
            f"RECEIVER_WEBHOOK_SECRET: key 2: only 7 bytes of key material; {advice}",
            f"RECEIVER_CONFIG: sources.acme.secret: key 1: only 7 bytes of key material; {advice}",
            f"RECEIVER_FORWARD_SECRET: key 1: only 7 bytes of key material; {advice}",
        ) == settings.warnings
        assert LEAK not in repr(settings.warnings)

    @pytest.mark.parametrize(
        "secret",
        ["whsec_" + base64.b64encode(b"unpadded-key-of-25-bytes!").decode().rstrip("="),
         "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 12).decode()],
        ids=["unpadded", "url-safe"],
    )  # fmt: skip
    def test_unpadded_and_url_safe_keys_are_accepted(self, tmp_path: Path, secret: str) -> None:
        """whsec_ keys written unpadded or in URL-safe base64 start the service."""
        settings = Settings.from_env(env(tmp_path, RECEIVER_WEBHOOK_SECRET=secret))

        assert (Secret(secret),) == settings.sources["rivya"].keys


class TestSecretFiles:
    @pytest.mark.parametrize(
        ("variable", "value", "read"),
        [
            ("RECEIVER_WEBHOOK_SECRET", SECRET_2, lambda s: s.sources["rivya"].keys[0]),
            ("RECEIVER_SINK", f"postgresql://u:{LEAK}@db/x", lambda s: s.sink_url),
            ("RECEIVER_REDIS_URL", f"redis://:{LEAK}@cache:6379/0", lambda s: s.redis_url),
            ("RECEIVER_FORWARD_SECRET", SECRET_2, lambda s: s.forward_secret),
            ("RECEIVER_ENCRYPTION_KEYS", FERNET_KEY, lambda s: s.encryption_keys[0]),
        ],
        ids=["webhook-secret", "sink", "redis", "forward", "encryption"],
    )
    def test_file_variant(self, tmp_path: Path, variable: str, value: str, read: Any) -> None:
        """``X_FILE`` reads the value from a file (trailing newline stripped)."""
        environ = env(tmp_path, **{f"{variable}_FILE": write(tmp_path, "value", value + "\n")})
        environ.pop(variable, None)

        assert Secret(value) == read(Settings.from_env(environ))

    @pytest.mark.parametrize(
        "variable",
        ["RECEIVER_WEBHOOK_SECRET", "RECEIVER_SINK", "RECEIVER_REDIS_URL",
         "RECEIVER_FORWARD_SECRET", "RECEIVER_ENCRYPTION_KEYS"],
        ids=str,
    )  # fmt: skip
    def test_both_set(self, tmp_path: Path, variable: str) -> None:
        """Setting both X and X_FILE is an error naming X, even when both are valid."""
        environ = env(tmp_path, **{variable: "log:", f"{variable}_FILE": write(tmp_path, "v", "x")})

        assert config_error(environ).startswith(f"{variable}: set either")

    @pytest.mark.parametrize(
        ("content", "fragment"),
        [(b"  \n", "is empty"), (b"\xff\xfe", "not UTF-8")],
        ids=["empty", "not-utf8"],
    )
    def test_unusable_file(self, tmp_path: Path, content: bytes, fragment: str) -> None:
        """An empty or non-text secret file is an error naming the _FILE variable."""
        environ = {"RECEIVER_WEBHOOK_SECRET_FILE": write(tmp_path, "secret", content)}

        message = config_error(environ)

        expected = (True, True)
        assert expected == (
            message.startswith("RECEIVER_WEBHOOK_SECRET_FILE:"),
            fragment in message,
        )


class TestRedaction:
    def test_repr_holds_no_secret(self, tmp_path: Path) -> None:
        """repr/str of Settings show no webhook, redis, sink, forward or encryption secret."""
        config = write(
            tmp_path, "r.toml", f'[sources.acme]\nscheme = "stripe"\nsecret = "{LEAK}1"\n'
        )
        settings = Settings.from_env(
            env(
                tmp_path,
                RECEIVER_WEBHOOK_SECRET=f"{TEST_SECRET} {SECRET_2}",
                RECEIVER_REDIS_URL=f"redis://:{LEAK}2@cache:6379/0",
                RECEIVER_SINK=f"https://user:{LEAK}3@hooks.example/in?token={LEAK}4",
                RECEIVER_FORWARD_SECRET=SECRET_2,
                RECEIVER_ENCRYPTION_KEYS=FERNET_KEY,
                RECEIVER_CONFIG=config,
            )
        )
        printed = repr(settings) + str(settings)
        secrets = [LEAK, TEST_SECRET.removeprefix("whsec_"), SECRET_2.removeprefix("whsec_"),
                   FERNET_KEY]  # fmt: skip

        expected: list[str] = []
        assert expected == [secret for secret in secrets if secret in printed]

    @pytest.mark.parametrize("show", [repr, str, "{}".format, "{!r}".format], ids=str)
    def test_secret_masks_itself(self, show: Any) -> None:
        """A Secret never shows its value, however it is formatted; reveal() gives it back."""
        secret = Secret(LEAK)

        expected = (False, LEAK)
        assert expected == (LEAK in show(secret), secret.reveal())


class TestMaskUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://app:pw@db:5432/records", "postgresql://app:***@db:5432/records"),
            ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
            ("redis://u:p@ss@cache/0", "redis://u:***@cache/0"),
            ("https://tok3n@hooks.example/in", "https://***@hooks.example/in"),
            ("https://hooks.example/in?token=abc&x=1", "https://hooks.example/in?***"),
            ("https://u:pw@hooks.example/in?sig=1", "https://u:***@hooks.example/in?***"),
            ("sqlite:///data/records.db", "sqlite:///data/records.db"),
            ("sqlite:////abs/r.db?mode=ro", "sqlite:////abs/r.db?***"),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            ("log:", "log:"),
            ("http://[::1", "<unparseable URL>"),
        ],
        ids=["password", "password-no-user", "at-in-password", "user-token", "query",
             "password-and-query", "sqlite", "sqlite-query", "no-credentials", "log",
             "unparseable"],
    )  # fmt: skip
    def test_mask(self, url: str, expected: str) -> None:
        """Passwords and query strings are masked; everything else is kept for debugging."""
        assert expected == mask_url(url)


class TestParseDuration:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("30d", 2_592_000), ("12h", 43_200), ("5m", 300), ("90s", 90), ("500ms", 0.5),
         ("2w", 1_209_600), ("15", 15), ("0", 0), (" 7 d ", 604_800)],
        ids=["days", "hours", "minutes", "seconds", "milliseconds", "weeks", "bare", "zero",
             "spaces"],
    )  # fmt: skip
    def test_valid(self, text: str, expected: float) -> None:
        """Durations with each unit (or none: seconds) convert to seconds."""
        assert expected == parse_duration(text)

    @pytest.mark.parametrize(
        "text",
        ["", "soon", "1.5h", "-5s", "5 days", "5x", "h", "1h30m"],
        ids=["empty", "word", "decimal", "negative", "long-unit", "bad-unit", "no-number",
             "compound"],
    )  # fmt: skip
    def test_invalid(self, text: str) -> None:
        """Anything else is a ValueError that quotes the text and shows an example."""
        with pytest.raises(ValueError, match=r"not a duration.*e\.g\. 30d"):
            parse_duration(text)


class TestParseSize:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [("32768", 32_768), ("32KiB", 32_768), ("32k", 32_768), ("32 kib", 32_768),
         ("1MiB", 1_048_576), ("1M", 1_048_576), ("512b", 512), (" 4K ", 4096)],
        ids=["bytes", "kib", "k", "spaced-lower", "mib", "m", "b", "padded"],
    )  # fmt: skip
    def test_valid(self, text: str, expected: int) -> None:
        """Sizes in bytes or binary units convert to bytes."""
        assert expected == parse_size(text)

    @pytest.mark.parametrize(
        "text",
        ["", "big", "32KB", "1MB", "1.5k", "-1", "1G", "9" * 16],
        ids=["empty", "word", "decimal-kilo", "decimal-mega", "fraction", "negative", "giga",
             "too-many-digits"],
    )  # fmt: skip
    def test_invalid(self, text: str) -> None:
        """Anything else (decimal units included: KB is ambiguous) names the accepted forms."""
        with pytest.raises(ValueError, match=r"not a size.*32KiB"):
            parse_size(text)


class TestSourcesFile:
    def test_valid_file(self, tmp_path: Path) -> None:
        """[sources.NAME] tables add sources; unset fields inherit the default source's."""
        key_file = write(tmp_path, "beta.key", f"{SECRET_2}\n")
        config = write(
            tmp_path,
            "receiver.toml",
            f"""
            [sources.acme]
            scheme = "stripe"
            secret = "sk_test_{LEAK}"
            signature_header = "Acme-Signature"
            tolerance_seconds = 60

            [sources.beta-2]
            secret_file = "{key_file}"

            [sources.rotating]
            secret = ["{TEST_SECRET}", "{SECRET_2}"]
            """,
        )
        settings = Settings.from_env(env(tmp_path, RECEIVER_CONFIG=config))
        summary = {
            name: (s.scheme, [k.reveal() for k in s.keys], s.signature_header, s.tolerance_seconds)
            for name, s in settings.sources.items()
        }

        expected = {
            "rivya": (Scheme.STANDARD, [TEST_SECRET], "Rivya-Signature", 300),
            "acme": (Scheme.STRIPE, [f"sk_test_{LEAK}"], "Acme-Signature", 60),
            "beta-2": (Scheme.STANDARD, [SECRET_2], "Rivya-Signature", 300),
            "rotating": (Scheme.STANDARD, [TEST_SECRET, SECRET_2], "Rivya-Signature", 300),
        }
        assert expected == summary

    @pytest.mark.parametrize(
        ("toml", "fragment"),
        [
            ("[sources.acme\nsecret = 1", "not valid TOML"),
            ('sources = "acme"', "[sources] must be a table"),
            (f'[sources."bad name"]\nsecret = "{TEST_SECRET}"', "sources.bad name"),
            ('[sources.acme]\nscheme = "stripe"', "exactly one of secret"),
            (f'[sources.acme]\nsecret = "{TEST_SECRET}"\nsecret_file = "/x"', "exactly one"),
            (f'[sources.acme]\nsecret = "{TEST_SECRET}"\nscheme = "hmac"', "acme.scheme"),
            (f'[sources.acme]\nsecret = "{TEST_SECRET}"\ntolerance_seconds = 0', "tolerance"),
            (f'[sources.acme]\nsecret = "{TEST_SECRET}"\ntolerance_seconds = true', "tolerance"),
            (f'[sources.acme]\nsecret = "{TEST_SECRET}"\nsignature_header = "A B"', "header"),
            ('[sources.acme]\nscheme = "stripe"\nsecret = 12345', "acme.secret"),
            (f'[sources.acme]\nsecret = "{LEAK}"', "acme.secret: key 1"),
            (f'[sources.acme]\nsecret = "whsec_{LEAK}!"', "acme.secret: key 1"),
            ('[sources.acme]\nsecret_file = "/nonexistent/key"', "acme.secret_file"),
        ],
        ids=["syntax", "not-a-table", "bad-name", "no-secret", "both-secrets", "bad-scheme",
             "zero-tolerance", "bool-tolerance", "bad-header", "number-secret", "no-prefix",
             "bad-base64", "missing-secret-file"],
    )  # fmt: skip
    def test_invalid_file(self, tmp_path: Path, toml: str, fragment: str) -> None:
        """Each mistake is a ConfigError naming RECEIVER_CONFIG and the field, not the secret."""
        message = config_error(env(tmp_path, RECEIVER_CONFIG=write(tmp_path, "r.toml", toml)))

        expected = (True, True, False)
        assert expected == (
            message.startswith("RECEIVER_CONFIG:"),
            fragment in message,
            LEAK in message or TEST_SECRET in message,
        )

    def test_secret_file_not_text(self, tmp_path: Path) -> None:
        """A source's secret_file that is not UTF-8 is a ConfigError, not a traceback."""
        key_file = write(tmp_path, "k", b"\xff\xfe")
        toml = f'[sources.acme]\nsecret_file = "{key_file}"'

        message = config_error(env(tmp_path, RECEIVER_CONFIG=write(tmp_path, "r.toml", toml)))

        assert message.startswith("RECEIVER_CONFIG: sources.acme.secret_file:")


class TestKeysAndSinks:
    @pytest.mark.parametrize("scheme", ["http", "https", "HTTPS"], ids=str)
    def test_http_sink_needs_forward_secret(self, tmp_path: Path, scheme: str) -> None:
        """An HTTP(S) sink without RECEIVER_FORWARD_SECRET cannot be opened (a start-up
        error of serve and worker), though ops commands that never open it load fine."""
        from receiver.sinks.base import open_sink

        settings = Settings.from_env(env(tmp_path, RECEIVER_SINK=f"{scheme}://hooks.example/in"))
        with pytest.raises(ConfigError) as caught:
            open_sink(settings)

        assert str(caught.value).startswith("RECEIVER_FORWARD_SECRET: required")

    def test_http_sink_with_forward_secret(self, tmp_path: Path) -> None:
        """With a whsec_ forward secret the HTTP sink is accepted and the secret kept."""
        settings = Settings.from_env(
            env(
                tmp_path, RECEIVER_SINK="https://hooks.example/in", RECEIVER_FORWARD_SECRET=SECRET_2
            )
        )

        assert Secret(SECRET_2) == settings.forward_secret

    @pytest.mark.parametrize(
        "secret",
        [TEST_SECRET.removeprefix("whsec_"), "whsec_n ot base64", "whsec_abcde", "whsec_",
         "whpk_" + base64.b64encode(b"\x01" * 31).decode(), "sk_test_abc", "whsec_ab=cd"],
        ids=["no-prefix", "space-inside", "impossible-length", "empty", "short-public-key",
             "other", "inner-padding"],
    )  # fmt: skip
    def test_standard_rejects_bad_key(self, tmp_path: Path, secret: str) -> None:
        """For ``standard`` a key without whsec_/whpk_ or with bad base64 stops start-up."""
        message = config_error(env(tmp_path, RECEIVER_WEBHOOK_SECRET=secret))

        assert message.startswith("RECEIVER_WEBHOOK_SECRET: key 1:")

    @pytest.mark.parametrize(
        "secret",
        ["sk_test_abc", "whsec_not-base64!", "x", TEST_SECRET, f"{LEAK} {TEST_SECRET}"],
        ids=["stripe-style", "bad-base64", "one-char", "whsec", "two-keys"],
    )
    def test_stripe_accepts_any_secret(self, tmp_path: Path, secret: str) -> None:
        """For ``stripe`` every non-empty string is a key, split on spaces and commas."""
        settings = Settings.from_env(
            env(tmp_path, RECEIVER_SIGNATURE_SCHEME="stripe", RECEIVER_WEBHOOK_SECRET=secret)
        )

        assert tuple(Secret(k) for k in secret.split()) == settings.sources["rivya"].keys

    def test_public_and_shared_keys(self, tmp_path: Path) -> None:
        """``standard`` accepts whsec_ and whpk_ keys together (rotation: all verify)."""
        settings = Settings.from_env(
            env(tmp_path, RECEIVER_WEBHOOK_SECRET=f"{TEST_SECRET},{PUBLIC_KEY}")
        )

        assert (Secret(TEST_SECRET), Secret(PUBLIC_KEY)) == settings.sources["rivya"].keys


RIVYA_KEY = f"rvya_sk_{LEAK}_0123456789"
RECONCILE_BAD_VALUES = [
    ("RECEIVER_RIVYA_API_URL", "ftp://rivya.ai"),
    ("RECEIVER_RIVYA_API_URL", "https://"),
    ("RECEIVER_RIVYA_API_URL", f"https://user:{LEAK}@rivya.ai"),
    ("RECEIVER_RIVYA_API_URL", f"https://rivya.ai/?key={LEAK}"),
    ("RECEIVER_RIVYA_API_URL", f"https://[{LEAK}"),
    ("RECEIVER_RIVYA_API_KEY", f"{LEAK}-no-prefix"),
    ("RECEIVER_RIVYA_API_KEY", f"rvya_sk_{LEAK} more"),
    ("RECEIVER_RIVYA_API_KEY", "rvya_sk_"),
    ("RECEIVER_RIVYA_API_KEY", SECRET_2),
    ("RECEIVER_RIVYA_API_KEY_FILE", "/nonexistent/api-key"),
    ("RECEIVER_RIVYA_API_KEY_HEADER", "Bad Header"),
    ("RECEIVER_RIVYA_API_KEY_HEADER", "Host"),
    ("RECEIVER_RECONCILE_AFTER", "soon"),
    ("RECEIVER_RECONCILE_AFTER", "0s"),
    ("RECEIVER_RECONCILE_MAX_AGE", "-1h"),
    ("RECEIVER_RECONCILE_MAX_AGE", "0ms"),
    ("RECEIVER_RECONCILE_RATE", "fast"),
    ("RECEIVER_RECONCILE_RATE", "0"),
    ("RECEIVER_RECONCILE_RATE", "5/d"),
    ("RECEIVER_RECONCILE_RATE", "2000/s"),
]
RECONCILE_BAD_IDS = [
    "url-ftp", "url-no-host", "url-credentials", "url-query", "url-unparseable",
    "key-no-prefix", "key-space", "key-empty-body", "key-is-a-webhook-secret",
    "key-file-missing", "header-space", "header-host", "after-word", "after-zero",
    "max-age-negative", "max-age-zero", "rate-word", "rate-zero", "rate-unit", "rate-too-high",
]  # fmt: skip


class TestReconcileSettings:
    def test_defaults(self, tmp_path: Path) -> None:
        """Rivya's public API, no key, Authorization, 10 min, 48 h, 5/s (SPEC §10)."""
        settings = Settings.from_env(env(tmp_path))
        assert (
            "https://rivya.ai", None, "Authorization", 600, 48 * 3600, 5.0
        ) == (
            settings.rivya_api_url, settings.rivya_api_key, settings.rivya_api_key_header,
            settings.reconcile_after_seconds, settings.reconcile_max_age_seconds,
            settings.reconcile_rate,
        )  # fmt: skip
        with pytest.raises(ConfigError, match=r"^RECEIVER_RIVYA_API_KEY: required"):
            settings.require_api_key()

    @pytest.mark.parametrize(
        ("variable", "value", "attribute", "expected"),
        [
            ("RECEIVER_RIVYA_API_URL", "http://127.0.0.1:9/base/", "rivya_api_url",
             "http://127.0.0.1:9/base"),
            ("RECEIVER_RIVYA_API_KEY_HEADER", "X-API-Key", "rivya_api_key_header", "X-API-Key"),
            ("RECEIVER_RECONCILE_AFTER", "500ms", "reconcile_after_seconds", 0.5),
            ("RECEIVER_RECONCILE_AFTER", "30s", "reconcile_after_seconds", 30),
            ("RECEIVER_RECONCILE_MAX_AGE", "30d", "reconcile_max_age_seconds", 30 * 86400),
            ("RECEIVER_RECONCILE_RATE", "300/m", "reconcile_rate", 5.0),
            ("RECEIVER_RECONCILE_RATE", "0.5/s", "reconcile_rate", 0.5),
            ("RECEIVER_RECONCILE_RATE", "12", "reconcile_rate", 12.0),
        ],
        ids=["url-trailing-slash", "header", "after-ms", "after-s", "max-age-days",
             "rate-per-minute", "rate-fraction", "rate-bare"],
    )  # fmt: skip
    def test_value_read(
        self, tmp_path: Path, variable: str, value: str, attribute: str, expected: object
    ) -> None:
        """Each reconciliation variable's valid value lands, parsed, on the settings."""
        assert expected == getattr(Settings.from_env(env(tmp_path, **{variable: value})), attribute)

    @pytest.mark.parametrize(("variable", "value"), RECONCILE_BAD_VALUES, ids=RECONCILE_BAD_IDS)
    def test_bad_value(self, tmp_path: Path, variable: str, value: str) -> None:
        """A bad value stops start-up with one line naming the variable, never the key."""
        message = config_error(env(tmp_path, **{variable: value}))

        assert (True, False, False) == (
            message.startswith(f"{variable}:"),
            LEAK in message,
            "\n" in message,
        )
        assert variable in KNOWN_VARIABLES

    def test_key_from_a_file_never_shows(self, tmp_path: Path) -> None:
        """The key can come from RECEIVER_RIVYA_API_KEY_FILE; repr and config check's lines
        show it masked; setting both is an error."""
        from receiver.ops import describe_settings

        key_file = write(tmp_path, "api-key", RIVYA_KEY + "\n")
        settings = Settings.from_env(env(tmp_path, RECEIVER_RIVYA_API_KEY_FILE=key_file))
        assert Secret(RIVYA_KEY) == settings.require_api_key()
        shown = repr(settings) + repr(describe_settings(settings))
        assert LEAK not in shown
        both = env(tmp_path, RECEIVER_RIVYA_API_KEY=RIVYA_KEY, RECEIVER_RIVYA_API_KEY_FILE=key_file)
        assert config_error(both).startswith("RECEIVER_RIVYA_API_KEY: set either")

    def test_rivya_poll_is_reserved(self, tmp_path: Path) -> None:
        """A configured source may not be called rivya-poll: only polling makes those."""
        toml = f'[sources.rivya-poll]\nsecret = "{TEST_SECRET}"\n'
        message = config_error(env(tmp_path, RECEIVER_CONFIG=write(tmp_path, "r.toml", toml)))
        assert "sources.rivya-poll: rivya-poll is reserved" in message

    def test_event_sources_include_the_poll_source(self, tmp_path: Path) -> None:
        """Every source a stored event can have: the configured ones, then rivya-poll."""
        assert ("rivya", "rivya-poll") == Settings.from_env(env(tmp_path)).event_sources

    def test_a_max_age_past_the_retention_warns(self, tmp_path: Path) -> None:
        """Housekeeping drops watches at the retention: a longer max age is a warning."""
        settings = Settings.from_env(env(tmp_path, RECEIVER_RECONCILE_MAX_AGE="31d"))
        assert any(w.startswith("RECEIVER_RECONCILE_MAX_AGE:") for w in settings.warnings)
        assert not Settings.from_env(env(tmp_path)).warnings


class TestCheckEnv:
    @pytest.mark.parametrize(("variable", "value"), BAD_VALUES, ids=BAD_IDS)
    def test_reports_what_from_env_stops_at(
        self, tmp_path: Path, variable: str, value: str
    ) -> None:
        """For each bad value, check_env reports exactly the error from_env raises."""
        environ = env(tmp_path, **{variable: value})
        if variable == "RECEIVER_WEBHOOK_SECRET_FILE":
            del environ["RECEIVER_WEBHOOK_SECRET"]

        assert [config_error(environ)] == [str(error) for error in Settings.check_env(environ)]

    def test_every_error_at_once(self, tmp_path: Path) -> None:
        """Three bad variables are three errors, each naming its variable, in one call."""
        environ = env(
            tmp_path,
            RECEIVER_TOLERANCE_SECONDS="soon",
            RECEIVER_LOG_LEVEL="loud",
            RECEIVER_SINK=f"admin:{LEAK}@db/records",
        )

        errors = [str(error) for error in Settings.check_env(environ)]

        assert ["RECEIVER_TOLERANCE_SECONDS", "RECEIVER_SINK", "RECEIVER_LOG_LEVEL"] == [
            message.split(":", 1)[0] for message in errors
        ]
        assert not any(LEAK in message for message in errors)

    def test_reads_checked_outside_the_reader_are_collected_too(self, tmp_path: Path) -> None:
        """The admin address and the retention floor are checked apart from the typed
        reads; check_env still reports them beside the others."""
        environ = env(
            tmp_path,
            RECEIVER_ADMIN_ADDR="no-port",
            RECEIVER_RETENTION="10s",
            RECEIVER_LOG_LEVEL="loud",
        )
        assert ["RECEIVER_RETENTION", "RECEIVER_ADMIN_ADDR", "RECEIVER_LOG_LEVEL"] == [
            str(error).split(":", 1)[0] for error in Settings.check_env(environ)
        ]

    def test_valid_environment_has_none(self, tmp_path: Path) -> None:
        """A configuration from_env accepts has no errors."""
        assert [] == Settings.check_env(env(tmp_path))

    def test_unknown_variable_is_a_warning_with_its_match(self) -> None:
        """A misspelt RECEIVER_ variable is named, with the variable it probably meant."""
        warnings = unknown_variables(
            {"RECEIVER_TOLERENCE_SECONDS": "60", "RECEIVER_SINK": "log:", "PATH": "/bin"}
        )
        assert [
            "RECEIVER_TOLERENCE_SECONDS: not a receiver variable, ignored; "
            "did you mean RECEIVER_TOLERANCE_SECONDS?"
        ] == warnings


class TestUnknownKeys:
    @pytest.mark.parametrize(
        ("toml", "expected"),
        [
            (
                f'[sources.acme]\nsecret = "{TEST_SECRET}"\ntolerence_seconds = 60',
                "RECEIVER_CONFIG: sources.acme.tolerence_seconds: unknown key "
                "(did you mean tolerance_seconds?)",
            ),
            (
                f'[source.acme]\nsecret = "{TEST_SECRET}"',
                "RECEIVER_CONFIG: source: unknown key (did you mean sources?)",
            ),
            (
                f'[sources.acme]\nsecret = "{TEST_SECRET}"\ncolour = "red"',
                "RECEIVER_CONFIG: sources.acme.colour: unknown key (known: scheme, secret, "
                "secret_file, signature_header, tolerance_seconds)",
            ),
        ],
        ids=["typo-in-source", "typo-at-top", "no-close-match"],
    )
    def test_unknown_key_stops_start_up(self, tmp_path: Path, toml: str, expected: str) -> None:
        """A key the file may not hold is an error naming it (and its close match), not a
        silently kept default."""
        environ = env(tmp_path, RECEIVER_CONFIG=write(tmp_path, "r.toml", toml))
        assert expected == config_error(environ)

    def test_check_env_reports_each_table(self, tmp_path: Path) -> None:
        """check_env reports a typo in one table and a mistake in another together."""
        toml = (
            f'[sources.acme]\nsecret = "{TEST_SECRET}"\ntolerence_seconds = 60\n'
            '[sources.beta]\nscheme = "hmac"\nsecret = "x"\n'
        )
        environ = env(
            tmp_path, RECEIVER_CONFIG=write(tmp_path, "r.toml", toml), RECEIVER_LOG_LEVEL="loud"
        )
        assert [
            "RECEIVER_CONFIG: sources.acme.tolerence_seconds",
            "RECEIVER_CONFIG: sources.beta.scheme",
            "RECEIVER_LOG_LEVEL",
        ] == [str(error).rsplit(":", 1)[0] for error in Settings.check_env(environ)]
