"""Redaction: everything that keeps a secret out of an output, in one place (SPEC §8).

``Secret`` hides a value from ``repr``/``str``; ``mask_url`` shows a URL without its
password and query; ``redact_text``/``redact_value`` mask secret-looking values and keys
in free text and nested data; ``printable`` makes text from a signed body safe for a
terminal. The log processor, the CLI, the sinks that print and every page or API answer
use these and nothing else.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class Secret:
    """A string that never shows itself in ``repr``/``str``; call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def mask_url(url: str) -> str:
    """A URL with its password (and any query string) replaced, safe to print."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. an unclosed ``[`` IPv6 host: show nothing rather than all
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is None and not parts.query and "@" not in netloc:
        return url
    if "@" in netloc:
        # A bare user part can be a token too (https://TOKEN@host): only user:*** survives.
        user = parts.username or ""
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{user}:***@{host}" if password is not None else f"***@{host}"
    query = "***" if parts.query else ""
    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # urlunsplit drops an empty authority for schemes it does not know: keep
    # ``sqlite:///path`` from turning into ``sqlite:/path``.
    if not netloc and url[len(parts.scheme) : len(parts.scheme) + 3] == "://":
        masked = f"{parts.scheme}://{masked[len(parts.scheme) + 1 :]}"
    return masked


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that ``mask_url`` hides (password, query), to ``scrub`` them
    from messages that may quote the URL (a driver's exception text)."""
    try:
        parts = urlsplit(url)
        return tuple(part for part in (parts.password, parts.query) if part)
    except ValueError:
        return ()


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, as ``mask_url`` shows them."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"secret|token|passw|authorization|signature|api_?key|cookie|credential|private",
    re.IGNORECASE,
)
# Values that look like a secret wherever they appear in a string.
_SECRET_VALUE = re.compile(
    r"whsec_[A-Za-z0-9+/=_-]*"
    r"|rvya_sk_[A-Za-z0-9_-]*"
    r"|rcvadm_[A-Za-z0-9_-]*"  # console/API access tokens (receiver admin-token)
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    # user:password@ in any URL, except one mask_url already masked (user:***@)
    r"|(?<=[a-z]://)[^\s/:@]*:(?!\*\*\*@(?![^\s/]*@))[^\s/@]*@"
    r"|v1a?,[A-Za-z0-9+/]{20,}={0,2}"  # Standard Webhooks signature entries
    r"|v1=[0-9a-fA-F]{32,}"  # stripe-scheme signature entries
)
# The query string of any URL: signed file URLs carry their credentials there.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")


def may_hold_secret(text: str) -> bool:
    # PERF: most strings on a line (ids, types, names) hold none of the markers that the
    # patterns above need; plain substring tests answer that in ~0.4 µs against ~2 µs for
    # one case-insensitive regex search. Only ``bearer`` is matched case-insensitively.
    return (
        "://" in text
        or "whsec_" in text
        or "rvya_sk_" in text
        or "rcvadm_" in text
        or "v1," in text
        or "v1=" in text
        or "v1a," in text
        or "bearer" in text.lower()
    )


def redact_text(text: str) -> str:
    """Mask secret-looking values and URL query strings in free text."""
    if not may_hold_secret(text):
        return text
    text = _URL_QUERY.sub(r"\1?" + REDACTED, text)
    return _SECRET_VALUE.sub(REDACTED, text)


# PERF: most values on a log line are plain str/int/float/None; an exact-type test answers
# them before the ABC ``isinstance(value, Mapping)`` check (~1 µs each). Same results: every
# other type, subclasses included, still takes the full chain below.
PLAIN_TYPES = frozenset({int, float, bool, type(None)})


# Deeper than this, a value is not walked but replaced: a signed body may nest hundreds of
# levels (PITFALLS), and neither the recursion limit nor orjson (255 levels) must fail on it.
MAX_DEPTH = 64
TOO_DEEP = "[REDACTED: nested too deep]"
_SEQUENCES = (list, tuple, set, frozenset)
_CONTAINERS = (Mapping, *_SEQUENCES)


def nesting_depth(value: Any, stop_at: int = MAX_DEPTH + 1) -> int:
    """How many mapping/sequence levels ``value`` has, counted up to ``stop_at``, level by
    level (no recursion: this is how a caller learns a value is too deep to walk)."""
    depth = 0
    level = [value]
    while depth < stop_at:
        containers = [item for item in level if isinstance(item, _CONTAINERS)]
        if not containers:
            break
        depth += 1
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, Mapping) else container)
        ]
    return depth


def redact_value(value: Any, _depth: int = 0) -> Any:
    """Redact strings, recursively through mappings and sequences (``MAX_DEPTH`` levels;
    anything deeper becomes ``TOO_DEEP``)."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return REDACTED  # raw bytes are bodies or keys: never logged
    if isinstance(value, Mapping):
        if _depth >= MAX_DEPTH:
            return TOO_DEEP
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) else redact_value(item, _depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, _SEQUENCES):
        if _depth >= MAX_DEPTH:
            return TOO_DEEP
        return [redact_value(item, _depth + 1) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


@functools.lru_cache(maxsize=1024)
def is_secret_key(key: str) -> bool:
    # PERF: log lines reuse a handful of field names; the regex runs once per name.
    return _SECRET_KEY.search(key) is not None


# ``name: value`` / ``name=value`` pairs in free text whose name says "secret": a quoted
# value, or a bare one up to a separator. JSON, form, header and query shapes alike.
_NAMED_VALUE = re.compile(
    r"""(?P<name>["']?[\w.-]*(?:"""
    # _SECRET_KEY's names, with header spellings (X-Api-Key) too
    + _SECRET_KEY.pattern.replace("api_?key", "api[_-]?key")
    + r""")[\w.-]*["']?\s*[:=]\s*)(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^\s,;&}\]"']+)""",
    re.IGNORECASE,
)


def redact_named_values(text: str) -> str:
    """``redact_text``, and also mask the value of every pair whose name says it is a
    secret (``"api_key": "..."``, ``password=...``), whatever the value looks like.

    For text we did not write (a downstream's error page, which may echo its own
    credentials in a form we cannot recognise by value); not for log lines, whose fields
    ``redact_value`` already masks by name."""
    text = redact_text(text)

    def masked(match: re.Match[str]) -> str:
        value = match["value"]
        quote = value[0] if value[0] in "\"'" else ""
        return f"{match['name']}{quote}{REDACTED}{quote}"

    return _NAMED_VALUE.sub(masked, text)


# -- terminal safety ---------------------------------------------------------------------

# Characters a terminal acts on instead of showing (PITFALLS: a signed body is untrusted):
# C0 controls (ESC starts CSI/OSC sequences: retitle the window, rewrite the screen, hide
# text, forge hyperlinks; CR overwrites a line), DEL, the C1 controls (0x9b is a one-byte
# CSI on some terminals) and the Unicode bidi overrides and isolates, which reorder what
# is shown ("Trojan Source", CVE-2021-42574), and the line/paragraph separators.
_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_UNPRINTABLE = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *_BIDI, 0x2028, 0x2029)
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNPRINTABLE}
_ESCAPES_KEEP_LINES = {code: text for code, text in _ESCAPES.items() if code not in (0x09, 0x0A)}


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control, bidi and separator character shown as ``\\xNN``/``\\uNNNN``.

    For anything printed from an event (ids, types, errors, bodies): the terminal shows
    the characters instead of obeying them. ``multiline`` keeps newlines and tabs (a body
    printed over several lines). Markup (``[bold]``) is the printer's business: print
    cells as plain text, never as markup.
    """
    return text.translate(_ESCAPES_KEEP_LINES if multiline else _ESCAPES)
