"""Settings: read once from the environment (and an optional TOML file), validated eagerly.

Nothing else in the package reads ``os.environ``. Every problem becomes a ``ConfigError``
whose message names the variable and never includes a secret value (SPEC §6).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from receiver.errors import ConfigError
from receiver.redaction import Secret
from receiver.signing import HMAC_PREFIX, Scheme, key_warnings, parse_keys

DEFAULT_SOURCE = "rivya"
# Measured (bench/README.md, "Slow and oversized connections"): each connection can hold up to
# a body limit plus a header budget for a read deadline; this many keep serve under the 512 Mi
# pod limit with the default limits.
DEFAULT_MAX_CONNECTIONS = 1_000
# The source of reconciliation events (issue 16, SPEC §10): stored like a webhook's but
# made by polling Rivya's status API. It has no signing keys and is never a webhook path.
POLL_SOURCE = "rivya-poll"
DEFAULT_RIVYA_API_URL = "https://rivya.ai"
# Rivya documents API keys as ``rvya_sk_…``; the log redaction recognises them by exactly
# this shape, so a key of any other shape could not be masked wherever it might show up.
_API_KEY = re.compile(r"rvya_sk_[A-Za-z0-9_-]{1,500}")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(s|m|h))?\s*$")
_RATE_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}
MAX_RECONCILE_RATE = 1000.0
# Header names that carry the request itself: an API key in one of them would break it.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept",
        "user-agent",
    }
)
LogFormat = Literal["json", "console"]
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # with fullmatch: ``$`` allows a final \n
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]{1,100}")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)?\s*$")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
# Between receiver hosts (one accepts a copy, another the replay) whose clocks differ. NTP
# keeps them within milliseconds; 5 s covers a host that has drifted, and keeps the floor
# low enough (2 x 1 s + 5 s) for tests that wait for retention to run out.
RETENTION_SKEW_MARGIN_SECONDS = 5
DEFAULT_ADMIN_ADDR = ("127.0.0.1", 8081)
_ADDR = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})")
_SIZE = re.compile(r"([0-9]{1,15})\s*([A-Za-z]*)")
# Binary units only: ``KB`` means 1000 to some and 1024 to others, so it is refused.
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2}
# What a ``[sources.NAME]`` table may hold; anything else is a typo to refuse, not ignore.
SOURCE_FILE_KEYS = ("scheme", "secret", "secret_file", "signature_header", "tolerance_seconds")
SOURCE_FILE_TOP_LEVEL = ("sources",)
T = TypeVar("T")


def parse_duration(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90s``, ``500ms`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90s)")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str) -> int:
    """Bytes in ``32768``, ``32KiB`` (or ``32k``), ``1MiB`` (or ``1m``)."""
    match = _SIZE.fullmatch(text.strip())
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"not a size: {text[:40]!r} (use e.g. 32768, 32KiB, 1MiB)")
    return int(match.group(1)) * unit


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One sender: how its deliveries are signed and how old they may be."""

    name: str
    scheme: Scheme
    keys: tuple[Secret, ...]
    signature_header: str = "Rivya-Signature"
    tolerance_seconds: int = 300


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service needs, validated. Build with ``Settings.from_env``."""

    sources: Mapping[str, SourceConfig]
    data_dir: Path
    sink_url: Secret
    redis_url: Secret | None = None
    max_body_bytes: int = 262_144
    max_header_bytes: int = 32_768
    read_timeout_seconds: float = 10.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    retention_seconds: int = 30 * 86400
    encryption_keys: tuple[Secret, ...] = ()
    forward_secret: Secret | None = None
    log_format: LogFormat = "json"
    log_level: str = "info"
    visibility_timeout_seconds: float = 30.0
    # None: no count limit, only the time budget (retry_for_seconds) ends the retries.
    max_attempts: int | None = None
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    retry_for_seconds: float = 86400.0
    circuit_failures: int = 5
    sink_timeout_seconds: float = 10.0
    shutdown_timeout_seconds: float = 25.0
    shutdown_drain_seconds: float = 2.0
    worker_concurrency: int = 16
    queue_shards: int = 1
    # Valid but unwise choices (a webhook key under 16 bytes), one line each, never a secret:
    # logged at start-up by ``serve`` and ``worker`` and listed by ``config check``.
    warnings: tuple[str, ...] = ()
    # The admin listener (console, API, metrics, detailed readiness; SPEC §10); None: off.
    admin_addr: tuple[str, int] | None = DEFAULT_ADMIN_ADDR
    admin_users_file: Path | None = None
    admin_session_seconds: float = 8 * 3600.0
    # Who runs operator actions (replay, resolve) for the audit log; ``--actor`` wins.
    actor: str | None = None
    redis_timeout_seconds: float = 2.0
    allow_evicting_redis: bool = False
    # Reconciliation (issue 16): Rivya's status API and how politely it is polled.
    rivya_api_url: str = DEFAULT_RIVYA_API_URL
    rivya_api_key: Secret | None = None
    rivya_api_key_header: str = "Authorization"
    reconcile_after_seconds: float = 600.0
    reconcile_max_age_seconds: float = 48 * 3600.0
    reconcile_rate: float = 5.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    def source(self, name: str) -> SourceConfig | None:
        return self.sources.get(name)

    @property
    def event_sources(self) -> tuple[str, ...]:
        """Every source stored events can have: the configured ones and ``rivya-poll``."""
        return (*sorted(self.sources), POLL_SOURCE)

    def require_api_key(self) -> Secret:
        """The Rivya API key, or ConfigError: ``receiver reconcile`` cannot poll without it."""
        if self.rivya_api_key is None:
            raise ConfigError(
                "RECEIVER_RIVYA_API_KEY: required to poll Rivya's status API "
                "(or RECEIVER_RIVYA_API_KEY_FILE)"
            )
        return self.rivya_api_key

    def require_signing_keys(self) -> None:
        """ConfigError unless every source has keys: ``serve`` cannot verify without them.

        Workers and ops commands never verify a delivery, so they run without the secret
        (a worker pod need not hold it).
        """
        for source in self.sources.values():
            if not source.keys:
                raise ConfigError(
                    "RECEIVER_WEBHOOK_SECRET: required (or RECEIVER_WEBHOOK_SECRET_FILE); "
                    "create one with `receiver gen-secret`"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every setting; raise ConfigError naming the first bad one."""
        return cls._read(_EnvReader(environ))

    @classmethod
    def check_env(cls, environ: Mapping[str, str]) -> list[ConfigError]:
        """Every problem ``from_env`` would stop at, all at once (``config check``); empty
        when ``from_env`` succeeds. A bad value counts as its default for the checks that
        follow, so one mistake is reported once."""
        errors: list[ConfigError] = []
        cls._read(_EnvReader(environ, errors))
        return errors

    @classmethod
    def _read(cls, reader: _EnvReader) -> Settings:
        data_dir = Path(reader.text("RECEIVER_DATA_DIR", "./receiver-data")).expanduser()
        sources = {DEFAULT_SOURCE: _default_source(reader)}
        config_path = reader.text("RECEIVER_CONFIG", "")
        if config_path:
            sources.update(_sources_from_file(reader, Path(config_path), sources[DEFAULT_SOURCE]))
        # A sink URL can hold a database password, so it is read like a secret (``_FILE`` too).
        sink_secret = reader.secret("RECEIVER_SINK")
        sink_url = (
            sink_secret.reveal() if sink_secret else f"sqlite:///{data_dir.resolve()}/records.db"
        )
        # The value is not echoed: ``user:password@host`` is "not a URL" and all password.
        sink_scheme = _url_scheme(sink_url)
        if sink_scheme is None or ("://" not in sink_url and not sink_url.endswith(":")):
            reader.report(
                ConfigError(
                    "RECEIVER_SINK: not a sink URL (e.g. sqlite:///path.db, postgresql://..., "
                    "https://..., redis://..., log:)"
                )
            )
        # Required only where the HTTP sink is opened (HttpSink says so): an operator
        # listing events needs Redis, not the downstream's signing secret.
        forward_secret = reader.secret("RECEIVER_FORWARD_SECRET")
        if forward_secret is not None:
            try:
                _check_forward_secret(forward_secret)
            except ConfigError as exc:
                reader.report(exc)
                forward_secret = None  # collecting: judge the rest without it
        redis_url = reader.secret("RECEIVER_REDIS_URL")
        if redis_url is not None and _url_scheme(redis_url.reveal()) not in (
            "redis",
            "rediss",
            "unix",
            "redis+cluster",
            "rediss+cluster",
        ):
            reader.report(
                ConfigError("RECEIVER_REDIS_URL: must be a redis://, rediss:// or unix:// URL")
            )
        retention_seconds = int(reader.duration("RECEIVER_RETENTION", "30d", minimum=1))
        reader.attempt(lambda: _check_retention(retention_seconds, sources), None)
        encryption = reader.secret("RECEIVER_ENCRYPTION_KEYS")
        no_keys: tuple[Secret, ...] = ()
        encryption_keys = reader.attempt(lambda: _encryption_keys(encryption), no_keys)
        log_format = reader.choice("RECEIVER_LOG_FORMAT", "json", ("json", "console"))
        max_age = reader.duration("RECEIVER_RECONCILE_MAX_AGE", "48h", minimum=0.001)
        default_addr: tuple[str, int] | None = DEFAULT_ADMIN_ADDR
        admin_addr = reader.attempt(lambda: _admin_addr(reader.environ), default_addr)
        return cls(
            sources=sources,
            data_dir=data_dir,
            sink_url=Secret(sink_url),
            redis_url=redis_url,
            max_body_bytes=reader.integer("RECEIVER_MAX_BODY_BYTES", 262_144, minimum=1),
            # Below 1 KiB ordinary signed deliveries would not fit; above 1 MiB a connection
            # cap no longer bounds memory in any useful way.
            max_header_bytes=reader.size(
                "RECEIVER_MAX_HEADER_BYTES", "32KiB", minimum=1024, maximum=1024**2
            ),
            read_timeout_seconds=reader.duration("RECEIVER_READ_TIMEOUT", "10s", minimum=0.001),
            max_connections=reader.integer(
                "RECEIVER_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS, minimum=1, maximum=1_000_000
            ),
            retention_seconds=retention_seconds,
            encryption_keys=encryption_keys,
            forward_secret=forward_secret,
            log_format="console" if log_format == "console" else "json",
            log_level=reader.choice("RECEIVER_LOG_LEVEL", "info", LOG_LEVELS),
            visibility_timeout_seconds=reader.duration(
                "RECEIVER_VISIBILITY_TIMEOUT", "30s", minimum=0.1
            ),
            max_attempts=reader.optional_integer("RECEIVER_MAX_ATTEMPTS", minimum=1),
            retry_base_seconds=reader.duration("RECEIVER_RETRY_BASE", "1s", minimum=0.001),
            retry_max_seconds=reader.duration("RECEIVER_RETRY_MAX", "300s", minimum=0.001),
            retry_for_seconds=reader.duration("RECEIVER_RETRY_FOR", "24h", minimum=0.001),
            circuit_failures=reader.integer("RECEIVER_CIRCUIT_FAILURES", 5, minimum=1),
            sink_timeout_seconds=reader.duration("RECEIVER_SINK_TIMEOUT", "10s", minimum=0.1),
            shutdown_timeout_seconds=reader.duration(
                "RECEIVER_SHUTDOWN_TIMEOUT", "25s", minimum=0.1
            ),
            shutdown_drain_seconds=reader.duration("RECEIVER_SHUTDOWN_DRAIN", "2s", minimum=0),
            worker_concurrency=reader.integer("RECEIVER_WORKER_CONCURRENCY", 16, minimum=1),
            queue_shards=reader.integer("RECEIVER_QUEUE_SHARDS", 1, minimum=1, maximum=1024),
            warnings=_warnings(sources, forward_secret)
            + _reconcile_warnings(max_age, retention_seconds),
            admin_addr=admin_addr,
            admin_users_file=_optional_path(reader.text("RECEIVER_ADMIN_USERS_FILE", "")),
            admin_session_seconds=reader.duration("RECEIVER_ADMIN_SESSION_TTL", "8h", minimum=60),
            actor=reader.attempt(lambda: _actor(reader.text("RECEIVER_ACTOR", "")), None),
            # Below the sender's own timeout (Rivya's is "short"; 3 s is common), so a frozen
            # Redis answers 503 with Retry-After instead of a timeout the sender cannot read.
            redis_timeout_seconds=reader.duration("RECEIVER_REDIS_TIMEOUT", "2s", minimum=0.1),
            allow_evicting_redis=reader.boolean("RECEIVER_ALLOW_EVICTING_REDIS", default=False),
            rivya_api_url=reader.attempt(
                lambda: _rivya_api_url(reader.text("RECEIVER_RIVYA_API_URL", "")),
                DEFAULT_RIVYA_API_URL,
            ),
            rivya_api_key=reader.attempt(
                lambda: _api_key(reader.secret("RECEIVER_RIVYA_API_KEY")), None
            ),
            rivya_api_key_header=reader.attempt(
                lambda: _api_key_header(
                    reader.text("RECEIVER_RIVYA_API_KEY_HEADER", "Authorization")
                ),
                "Authorization",
            ),
            reconcile_after_seconds=reader.duration(
                "RECEIVER_RECONCILE_AFTER", "10m", minimum=0.001
            ),
            reconcile_max_age_seconds=max_age,
            reconcile_rate=reader.attempt(
                lambda: _rate(reader.text("RECEIVER_RECONCILE_RATE", "5/s")), 5.0
            ),
        )


# Every variable ``from_env`` reads, for the README and deploy-file checks.
KNOWN_VARIABLES: tuple[str, ...] = (
    "RECEIVER_WEBHOOK_SECRET",
    "RECEIVER_WEBHOOK_SECRET_FILE",
    "RECEIVER_SIGNATURE_SCHEME",
    "RECEIVER_SIGNATURE_HEADER",
    "RECEIVER_TOLERANCE_SECONDS",
    "RECEIVER_CONFIG",
    "RECEIVER_REDIS_URL",
    "RECEIVER_REDIS_URL_FILE",
    "RECEIVER_SINK",
    "RECEIVER_SINK_FILE",
    "RECEIVER_DATA_DIR",
    "RECEIVER_MAX_BODY_BYTES",
    "RECEIVER_MAX_HEADER_BYTES",
    "RECEIVER_READ_TIMEOUT",
    "RECEIVER_MAX_CONNECTIONS",
    "RECEIVER_RETENTION",
    "RECEIVER_ENCRYPTION_KEYS",
    "RECEIVER_ENCRYPTION_KEYS_FILE",
    "RECEIVER_FORWARD_SECRET",
    "RECEIVER_FORWARD_SECRET_FILE",
    "RECEIVER_LOG_FORMAT",
    "RECEIVER_LOG_LEVEL",
    "RECEIVER_VISIBILITY_TIMEOUT",
    "RECEIVER_MAX_ATTEMPTS",
    "RECEIVER_RETRY_BASE",
    "RECEIVER_RETRY_MAX",
    "RECEIVER_RETRY_FOR",
    "RECEIVER_CIRCUIT_FAILURES",
    "RECEIVER_SINK_TIMEOUT",
    "RECEIVER_SHUTDOWN_TIMEOUT",
    "RECEIVER_SHUTDOWN_DRAIN",
    "RECEIVER_WORKER_CONCURRENCY",
    "RECEIVER_QUEUE_SHARDS",
    "RECEIVER_ADMIN_ADDR",
    "RECEIVER_ADMIN_USERS_FILE",
    "RECEIVER_ADMIN_SESSION_TTL",
    "RECEIVER_ACTOR",
    "RECEIVER_REDIS_TIMEOUT",
    "RECEIVER_ALLOW_EVICTING_REDIS",
    "RECEIVER_RIVYA_API_URL",
    "RECEIVER_RIVYA_API_KEY",
    "RECEIVER_RIVYA_API_KEY_FILE",
    "RECEIVER_RIVYA_API_KEY_HEADER",
    "RECEIVER_RECONCILE_AFTER",
    "RECEIVER_RECONCILE_MAX_AGE",
    "RECEIVER_RECONCILE_RATE",
)


class _EnvReader:
    """Typed access to the environment; each error names its variable.

    Without ``errors`` the first problem raises (``from_env``); with a list, each problem
    is added to it and the setting's default is used instead (``check_env``).
    """

    def __init__(self, environ: Mapping[str, str], errors: list[ConfigError] | None = None) -> None:
        self._env = environ
        self._errors = errors

    @property
    def environ(self) -> Mapping[str, str]:
        return self._env

    def report(self, error: ConfigError) -> None:
        """Raise ``error``, or note it and go on when collecting every problem."""
        if self._errors is None:
            raise error
        if str(error) not in (str(seen) for seen in self._errors):
            self._errors.append(error)

    def attempt(self, read: Callable[[], T], default: T) -> T:
        """``read()``, or ``default`` once its ConfigError is reported."""
        try:
            return read()
        except ConfigError as exc:
            self.report(exc)
            return default

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, "").strip() or default

    def secret(self, name: str) -> Secret | None:
        """``NAME`` or the contents of the file named by ``NAME_FILE``, never both."""
        value = self._env.get(name, "").strip()
        file_name = self._env.get(f"{name}_FILE", "").strip()
        if value and file_name:
            self.report(ConfigError(f"{name}: set either {name} or {name}_FILE, not both"))
            return None
        if file_name:
            try:
                value = Path(file_name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                self.report(ConfigError(f"{name}_FILE: cannot read {file_name}: {reason}"))
                return None
            if not value:
                self.report(ConfigError(f"{name}_FILE: {file_name} is empty"))
                return None
        return Secret(value) if value else None

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.report(ConfigError(f"{name}: expected a whole number, got {raw[:40]!r}"))
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
            self.report(ConfigError(f"{name}: must be {bound}, got {value}"))
            return default
        return value

    def optional_integer(self, name: str, *, minimum: int = 0) -> int | None:
        """A whole number, or None when the variable is unset (no default stands in)."""
        if not self._env.get(name, "").strip():
            return None
        return self.integer(name, minimum, minimum=minimum)

    def duration(self, name: str, default: str, *, minimum: float) -> float:
        raw = self._env.get(name, "").strip() or default
        try:
            value = parse_duration(raw)
        except ValueError as exc:
            self.report(ConfigError(f"{name}: {exc}"))
            return parse_duration(default)
        if value < minimum:
            self.report(ConfigError(f"{name}: must be at least {minimum}s, got {raw!r}"))
            return parse_duration(default)
        return value

    def size(self, name: str, default: str, *, minimum: int, maximum: int) -> int:
        raw = self._env.get(name, "").strip() or default
        try:
            value = parse_size(raw)
        except ValueError as exc:
            self.report(ConfigError(f"{name}: {exc}"))
            return parse_size(default)
        if not minimum <= value <= maximum:
            self.report(
                ConfigError(f"{name}: must be between {minimum} and {maximum} bytes, got {raw!r}")
            )
            return parse_size(default)
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        raw = self._env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        self.report(ConfigError(f"{name}: must be true or false, got {raw[:40]!r}"))
        return default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self._env.get(name, "").strip() or default).lower()
        if value not in allowed:
            self.report(
                ConfigError(f"{name}: must be one of {', '.join(allowed)}, got {value[:40]!r}")
            )
            return default
        return value


_ACTOR = re.compile(r"[^\x00-\x1f\x7f]{1,100}")


def _actor(value: str) -> str | None:
    """The audit actor: printable text, at most 100 characters; empty means unset."""
    if not value:
        return None
    if not _ACTOR.fullmatch(value):
        raise ConfigError("RECEIVER_ACTOR: at most 100 printable characters")
    return value


def _check_keys(variable: str, scheme: Scheme, raw: str, minimum: int = 1) -> tuple[Secret, ...]:
    try:
        keys = parse_keys(scheme, raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}") from None
    if len(keys) < minimum:
        raise ConfigError(f"{variable}: no key given")
    return tuple(Secret(key) for key in keys)


def _url_scheme(url: str) -> str | None:
    """The scheme, or None for text ``urlsplit`` rejects (it raises ValueError, not us)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        return None


def _check_forward_secret(secret: Secret) -> None:
    # The HTTP sink signs with it, so it must be exactly one shared (``whsec_``) key:
    # a ``whpk_`` public key cannot sign, and a list would be signed with as one key.
    keys = _check_keys("RECEIVER_FORWARD_SECRET", Scheme.STANDARD, secret.reveal(), 1)
    if len(keys) != 1 or not keys[0].reveal().startswith(HMAC_PREFIX):
        raise ConfigError("RECEIVER_FORWARD_SECRET: must be exactly one whsec_ key")


def _warnings(
    sources: Mapping[str, SourceConfig], forward_secret: Secret | None
) -> tuple[str, ...]:
    """Weak keys, each line starting with where the key was set."""
    lines: list[str] = []
    for name, source in sources.items():
        where = (
            "RECEIVER_WEBHOOK_SECRET"
            if name == DEFAULT_SOURCE
            else f"RECEIVER_CONFIG: sources.{name}.secret"
        )
        keys = [key.reveal() for key in source.keys]
        lines += [f"{where}: {line}" for line in key_warnings(source.scheme, keys)]
    if forward_secret is not None:
        keys = [forward_secret.reveal()]
        lines += [
            f"RECEIVER_FORWARD_SECRET: {line}" for line in key_warnings(Scheme.STANDARD, keys)
        ]
    return tuple(lines)


def _reconcile_warnings(max_age_seconds: float, retention_seconds: int) -> tuple[str, ...]:
    if max_age_seconds <= retention_seconds:
        return ()
    # Housekeeping forgets watched tasks at the retention, before any reconciler gave up.
    return (
        "RECEIVER_RECONCILE_MAX_AGE: longer than RECEIVER_RETENTION; tasks leave the watch "
        "list at the retention without a gave_up event",
    )


def _check_retention(retention_seconds: int, sources: Mapping[str, SourceConfig]) -> None:
    """Refuse a retention that lets the same signed bytes in twice.

    A delivery passes while its timestamp is within the tolerance of our clock, in either
    direction: a copy stamped ``tolerance`` ahead of us is accepted, and so is one that
    arrives when the stamp is ``tolerance`` behind, i.e. up to 2 x tolerance later. The
    dedup entry (kept for the retention, from the first copy on) must outlive that window,
    plus RETENTION_SKEW_MARGIN_SECONDS for the clocks of several receiver hosts.
    """
    longest = max(sources.values(), key=lambda source: source.tolerance_seconds)
    minimum = 2 * longest.tolerance_seconds + RETENTION_SKEW_MARGIN_SECONDS
    if retention_seconds < minimum:
        setting = (
            "RECEIVER_TOLERANCE_SECONDS"
            if longest.name == DEFAULT_SOURCE
            else f"RECEIVER_CONFIG sources.{longest.name}.tolerance_seconds"
        )
        raise ConfigError(
            f"RECEIVER_RETENTION: {retention_seconds}s would let a replay of the same signed "
            f"delivery in again; it must be at least {minimum}s (twice the "
            f"{longest.tolerance_seconds}s tolerance of source {longest.name}, {setting}, "
            f"plus {RETENTION_SKEW_MARGIN_SECONDS}s for clock skew)"
        )


def _default_source(reader: _EnvReader) -> SourceConfig:
    scheme = Scheme(reader.choice("RECEIVER_SIGNATURE_SCHEME", "standard", tuple(Scheme)))
    # Optional here: only the processes that verify deliveries need it (issue 14), and
    # they ask with ``Settings.require_signing_keys``; a value that is set is checked now.
    secret = reader.secret("RECEIVER_WEBHOOK_SECRET")
    header = reader.text("RECEIVER_SIGNATURE_HEADER", "Rivya-Signature")
    if not _HEADER_NAME.fullmatch(header):
        reader.report(ConfigError("RECEIVER_SIGNATURE_HEADER: not a valid header name"))
        header = "Rivya-Signature"
    keys: tuple[Secret, ...] = ()
    if secret is not None:
        raw = secret.reveal()
        keys = reader.attempt(lambda: _check_keys("RECEIVER_WEBHOOK_SECRET", scheme, raw), ())
    return SourceConfig(
        name=DEFAULT_SOURCE,
        scheme=scheme,
        keys=keys,
        signature_header=header,
        tolerance_seconds=reader.integer("RECEIVER_TOLERANCE_SECONDS", 300, minimum=1),
    )


def _sources_from_file(
    reader: _EnvReader, path: Path, default: SourceConfig
) -> dict[str, SourceConfig]:
    """``[sources.NAME]`` tables: scheme, secret or secret_file, header, tolerance_seconds.

    An unknown key is refused, with the close match: a typo (``tolerence_seconds``) would
    otherwise silently keep the default.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        reader.report(ConfigError(f"RECEIVER_CONFIG: cannot read {path}: {exc.strerror}"))
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reader.report(ConfigError(f"RECEIVER_CONFIG: {path} is not valid TOML: {exc}"))
        return {}
    for key in document:
        if key not in SOURCE_FILE_TOP_LEVEL:
            reader.report(unknown_key("RECEIVER_CONFIG: ", key, SOURCE_FILE_TOP_LEVEL))
    tables = document.get("sources", {})
    if not isinstance(tables, dict):
        reader.report(ConfigError("RECEIVER_CONFIG: [sources] must be a table of tables"))
        return {}
    sources: dict[str, SourceConfig] = {}
    for name, table in tables.items():
        try:
            sources[name] = _source_from_table(reader, name, table, default)
        except ConfigError as exc:
            reader.report(exc)
    return sources


def unknown_key(where: str, key: str, known: tuple[str, ...]) -> ConfigError:
    """``where`` + ``KEY: unknown key (did you mean …?)``, or the known keys when none is close."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(known)
    return ConfigError(f"{where}{key[:60]}: unknown key ({hint})")


def _source_from_table(
    reader: _EnvReader, name: str, table: Any, default: SourceConfig
) -> SourceConfig:
    """One ``[sources.NAME]`` table; raises ConfigError at its first structural mistake,
    after reporting its unknown keys."""
    where = f"RECEIVER_CONFIG: sources.{name}"
    if not _SOURCE_NAME.fullmatch(name) or not isinstance(table, dict):
        raise ConfigError(f"{where}: names are letters, digits, - and _; values are tables")
    if name == POLL_SOURCE:
        # Reconciliation events must only ever come from our own polling (issue 16).
        raise ConfigError(f"{where}: {POLL_SOURCE} is reserved for reconciliation events")
    for key in table:
        if key not in SOURCE_FILE_KEYS:
            reader.report(unknown_key(f"{where}.", key, SOURCE_FILE_KEYS))
    try:
        scheme = Scheme(table.get("scheme", default.scheme.value))
    except ValueError:
        raise ConfigError(f"{where}.scheme: must be standard or stripe") from None
    raw_secret = table.get("secret")
    secret_file = table.get("secret_file")
    if bool(raw_secret) == bool(secret_file):
        raise ConfigError(f"{where}: set exactly one of secret, secret_file")
    if isinstance(raw_secret, list) and all(isinstance(key, str) for key in raw_secret):
        raw_secret = " ".join(raw_secret)  # a TOML array of keys, for rotation
    if secret_file:
        if not isinstance(secret_file, str):
            raise ConfigError(f"{where}.secret_file: must be a path string")
        try:
            raw_secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}.secret_file: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}.secret_file: not UTF-8 text") from None
    if not isinstance(raw_secret, str):
        # str() of a number or table would become a "key" (any string is one for stripe).
        raise ConfigError(f"{where}.secret: must be a string or an array of strings")
    tolerance = table.get("tolerance_seconds", default.tolerance_seconds)
    # bool is an int in Python: ``tolerance_seconds = true`` must not mean 1 second.
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 1:
        raise ConfigError(f"{where}.tolerance_seconds: must be a positive whole number")
    header = table.get("signature_header", default.signature_header)
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{where}.signature_header: not a valid header name")
    return SourceConfig(
        name=name,
        scheme=scheme,
        keys=_check_keys(f"{where}.secret", scheme, raw_secret),
        signature_header=header,
        tolerance_seconds=tolerance,
    )


def _encryption_keys(raw: Secret | None) -> tuple[Secret, ...]:
    if raw is None:
        return ()
    from cryptography.fernet import Fernet  # local: only needed when encryption is on

    keys = [part for part in re.split(r"[\s,]+", raw.reveal()) if part]
    if not keys:  # set but only separators: silently storing plaintext would surprise
        raise ConfigError("RECEIVER_ENCRYPTION_KEYS: no key given")
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                f"RECEIVER_ENCRYPTION_KEYS: key {position} is not a Fernet key "
                "(32 url-safe base64 bytes; `receiver gen-key` makes one)"
            ) from None
    return tuple(Secret(key) for key in keys)


def _admin_addr(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """``host:port`` (``[::1]:8081`` for IPv6); unset: the default, set but empty: off."""
    if "RECEIVER_ADMIN_ADDR" not in environ:
        return DEFAULT_ADMIN_ADDR
    raw = environ["RECEIVER_ADMIN_ADDR"].strip()
    if not raw:
        return None
    match = _ADDR.fullmatch(raw)
    if match is None or not 1 <= int(match.group(3)) <= 65535:
        raise ConfigError(
            f"RECEIVER_ADMIN_ADDR: expected host:port (e.g. 127.0.0.1:8081, [::1]:8081), "
            f"or empty to turn the admin listener off; got {raw[:60]!r}"
        )
    return (match.group(1) or match.group(2), int(match.group(3)))


def _optional_path(text: str) -> Path | None:
    return Path(text).expanduser() if text else None


def _rivya_api_url(raw: str) -> str:
    """The base URL of Rivya's API (SPEC §10): http(s), a host, no credentials or query."""
    url = raw or DEFAULT_RIVYA_API_URL
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise ConfigError("RECEIVER_RIVYA_API_URL: not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("RECEIVER_RIVYA_API_URL: must be an http:// or https:// URL with a host")
    # Not echoed: a URL with user:password@ or a query may carry a secret.
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            "RECEIVER_RIVYA_API_URL: must not carry credentials, a query or a fragment "
            "(the key goes in RECEIVER_RIVYA_API_KEY)"
        )
    return url.rstrip("/")


def _api_key(secret: Secret | None) -> Secret | None:
    """Refuse what is not a Rivya API key, naming the variable and never the value."""
    if secret is None:
        return None
    key = secret.reveal()
    if key.startswith(("whsec_", "whpk_")):
        raise ConfigError(
            "RECEIVER_RIVYA_API_KEY: this is a webhook signing key (whsec_/whpk_), "
            "not a Rivya API key (rvya_sk_...)"
        )
    if not _API_KEY.fullmatch(key):
        raise ConfigError(
            "RECEIVER_RIVYA_API_KEY: not a Rivya API key (rvya_sk_ followed by letters, "
            "digits, - and _)"
        )
    return secret


def _api_key_header(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
        raise ConfigError(
            "RECEIVER_RIVYA_API_KEY_HEADER: not a header name an API key can travel in "
            "(e.g. Authorization or X-API-Key)"
        )
    return name


def _rate(raw: str) -> float:
    """Requests per second from ``5``, ``5/s``, ``300/m`` or ``0.5/s``."""
    match = _RATE.match(raw)
    if not match:
        raise ConfigError(
            f"RECEIVER_RECONCILE_RATE: not a rate (use e.g. 5/s, 300/m), got {raw[:40]!r}"
        )
    rate = float(match.group(1)) / _RATE_UNITS[match.group(2)]
    if not 0 < rate <= MAX_RECONCILE_RATE:
        raise ConfigError(
            f"RECEIVER_RECONCILE_RATE: must be above 0 and at most {MAX_RECONCILE_RATE:g}/s"
        )
    return rate


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``RECEIVER_*`` variable nothing reads: a misspelt one silently
    leaves its setting at the default (``config check`` lists them)."""
    warnings = []
    for name in sorted(environ):
        if name.startswith("RECEIVER_") and name not in KNOWN_VARIABLES:
            close = difflib.get_close_matches(name, KNOWN_VARIABLES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{name[:80]}: not a receiver variable, ignored{hint}")
    return warnings
