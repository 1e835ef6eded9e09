"""Run the app under uvicorn with an ordered, bounded graceful shutdown.

SIGTERM: readiness turns 503 at once and the server keeps serving for the drain period
(so load balancers stop sending), then stops accepting, lets in-flight requests finish
(up to the shutdown timeout), and the lifespan stops the worker, the sink and the embedded
Redis, in that order. SIGINT (Ctrl-C) skips the drain period.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Protocol

import uvicorn
from starlette.types import ASGIApp

from receiver.http_protocol import HttpLimits, bounded_protocol
from receiver.logs import get_logger
from receiver.settings import Settings

log = get_logger("receiver.server")


class Drainable(Protocol):
    def start_draining(self) -> None: ...


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM first drains readiness for ``drain_seconds``.

    It owns the process's signals; ``companions`` (the admin listener) stop with it.
    """

    def __init__(self, config: uvicorn.Config, app: Drainable, drain_seconds: float) -> None:
        super().__init__(config)
        self.receiver_app = app
        self.drain_seconds = drain_seconds
        self._drain_started = False
        self.companions: list[uvicorn.Server] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_seconds > 0 and not self._drain_started:
            self._drain_started = True
            self.receiver_app.start_draining()
            asyncio.get_event_loop().call_soon_threadsafe(self._drain_then_exit, sig, frame)
            return
        self._exit(sig, frame)

    def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        log.info("draining", seconds=self.drain_seconds)
        asyncio.get_running_loop().call_later(self.drain_seconds, self._exit, sig, frame)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        for companion in self.companions:
            companion.should_exit = True
        if sig in (signal.SIGTERM, signal.SIGINT):
            # uvicorn re-raises captured signals once shut down, so the exit status reads
            # "killed by SIGTERM". A completed graceful shutdown is a success: exit 0. (And
            # a re-raised SIGINT would interrupt the lifespan's shutdown in serve_together.)
            self._captured_signals[:] = [s for s in self._captured_signals if s != sig]


class CompanionServer(uvicorn.Server):
    """A second server on the same loop; the ``GracefulServer`` beside it handles signals
    (two servers installing handlers would each undo the other's)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ListenError(Exception):
    """An address could not be bound (in use, not local, not allowed)."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for ``host:port``, bound before any server starts, so a
    taken admin port stops start-up with one line instead of half a service."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ListenError(f"could not listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def serve_together(
    main: GracefulServer,
    main_socket: socket.socket,
    companions: Sequence[tuple[uvicorn.Server, socket.socket]],
    lifespan: contextlib.AbstractAsyncContextManager[None],
) -> None:
    """Run every server on this loop inside one lifespan (one runtime for all).

    Shutdown order: the servers stop accepting and finish their requests (they share the
    signal through ``main``), then the lifespan stops the worker, the sink and Redis.
    """
    main.companions = [server for server, _ in companions]
    for server, _ in ((main, main_socket), *companions):
        server.config.lifespan = "off"  # the lifespan is ours, entered once below
    servers = [(main, main_socket), *companions]
    async with lifespan:
        tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in servers]
        # One server ending (a signal, or a failure) ends them all.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*tasks)


def uvicorn_config(app: ASGIApp, host: str, port: int, settings: Settings) -> uvicorn.Config:
    """uvloop when installed, and httptools (``uvicorn[standard]``) bounded by our protocol.

    The protocol class carries the header, deadline and connection limits (http_protocol.py);
    WebSockets are off (the service has none, and an upgraded connection would leave those
    limits behind). The public and the admin listener get the same bounds.
    """
    fast_loop = importlib.util.find_spec("uvloop") is not None
    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        read_timeout_seconds=settings.read_timeout_seconds,
        max_connections=settings.max_connections,
        # The public app records what the protocol refuses with its other rejections.
        on_refusal=getattr(app, "note_refusal", None),
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if fast_loop else "asyncio",
        http=bounded_protocol(limits),
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_timeout_seconds)),
        backlog=2048,
    )
