"""A raw HTTP/1.1 client on a plain socket: it sends exactly the bytes a test gives it.

httpx and friends refuse to send what these tests need (CL+TE together, a 5,001-digit
``Content-Length``, headers trickled a byte at a time), so this reads answers by hand.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass, field

import orjson

from tests.factories import event_body, signed_headers

ANSWER_WAIT_SECONDS = 15.0


@dataclass
class Answer:
    """One HTTP answer as read off the socket."""

    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = False  # the server closed the connection after it
    seconds: float = 0.0  # from the start of the exchange to the answer's first byte
    extra: bytes = field(default=b"", repr=False)  # bytes after the answer, if any

    def json(self) -> object:
        return orjson.loads(self.body)


def connect(port: int, timeout: float = ANSWER_WAIT_SECONDS) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_bytes(
    method: str = "POST",
    path: str = "/webhooks/rivya",
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    body: bytes = b"",
    content_length: bool = True,
) -> bytes:
    """A request with ``headers`` in order (a ``Content-Length`` added unless told not to)."""
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if content_length and not any(name.lower() == "content-length" for name, _ in pairs):
        pairs.append(("content-length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n".encode()
    head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in pairs)
    return head + b"\r\n" + body


def signed_request(path: str = "/webhooks/rivya") -> bytes:
    """A valid signed delivery with a fresh event id."""
    body = event_body()
    return request_bytes(headers=signed_headers(body), body=body, path=path)


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; False when the server has already closed (it may have answered)."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def read_answer(
    sock: socket.socket,
    *,
    started: float | None = None,
    head_request: bool = False,
    timeout: float = ANSWER_WAIT_SECONDS,
) -> Answer:
    """Read one answer; ``closed`` says whether the server then closed the connection."""
    started = time.monotonic() if started is None else started
    deadline = time.monotonic() + timeout
    data = b""
    first_byte_at: float | None = None
    while True:
        while b"\r\n\r\n" not in data:
            chunk = _recv(sock, deadline)
            if not chunk:
                raise AssertionError(f"connection closed before a whole answer: {data[:200]!r}")
            first_byte_at = first_byte_at or time.monotonic()
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 1"):
            break
        data = rest  # an interim answer (100 Continue): the real one follows
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_request else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = _recv(sock, deadline)
        if not chunk:
            raise AssertionError("connection closed inside an answer's body")
        rest += chunk
    answer = Answer(
        status=int(status_line.split(" ", 2)[1]),
        headers=headers,
        body=rest[:length],
        seconds=(first_byte_at or time.monotonic()) - started,
        extra=rest[length:],
    )
    if headers.get("connection", "").lower() == "close":
        answer.closed = wait_closed(sock, timeout=max(0.1, deadline - time.monotonic()))
    return answer


def exchange(port: int, data: bytes, *, head_request: bool = False) -> Answer:
    """Send ``data`` on a new connection and read one answer."""
    with connect(port) as sock:
        started = time.monotonic()
        send_quietly(sock, data)
        return read_answer(sock, started=started, head_request=head_request)


def trickle(
    sock: socket.socket, data: bytes, interval: float, timeout: float = ANSWER_WAIT_SECONDS
) -> Answer:
    """Send ``data`` one byte every ``interval`` seconds until the server answers."""
    started = time.monotonic()
    deadline = started + timeout
    for offset in range(len(data)):
        if not send_quietly(sock, data[offset : offset + 1]):
            break
        if _readable(sock, interval) or time.monotonic() > deadline:
            break
    return read_answer(sock, started=started, timeout=max(0.1, deadline - time.monotonic()))


def count_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has neither answered nor closed (no fd-number limit)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return len(socks) - len(poller.poll(0))


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(timeout * 1000))


def wait_closed(sock: socket.socket, timeout: float = ANSWER_WAIT_SECONDS) -> bool:
    """True once the server has closed the connection (EOF or reset), False after ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            chunk = _recv(sock, deadline)
            if not chunk:
                return True
    except TimeoutError:
        return False


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no answer in time")
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""  # a close with unread data in the server's buffer arrives as a reset
    except TimeoutError:
        raise TimeoutError("no answer in time") from None
