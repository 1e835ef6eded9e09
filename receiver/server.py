"""Run the app under uvicorn with an ordered, bounded graceful shutdown.

SIGTERM: readiness turns 503 at once and the server keeps serving for the drain period
(so load balancers stop sending), then stops accepting, lets in-flight requests finish
(up to the shutdown timeout), and the lifespan stops the worker, the sink and the embedded
Redis, in that order. SIGINT (Ctrl-C) skips the drain period.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from types import FrameType

import uvicorn

from receiver.app import ReceiverApp
from receiver.logs import get_logger

log = get_logger("receiver.server")


class GracefulServer(uvicorn.Server):
    """uvicorn.Server whose SIGTERM first drains readiness for ``drain_seconds``."""

    def __init__(self, config: uvicorn.Config, app: ReceiverApp, drain_seconds: float) -> None:
        super().__init__(config)
        self.receiver_app = app
        self.drain_seconds = drain_seconds
        self._drain_started = False

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
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals once shut down, so the exit status reads
            # "killed by SIGTERM". A completed graceful shutdown is a success: exit 0.
            self._captured_signals[:] = [s for s in self._captured_signals if s != sig]


def uvicorn_config(
    app: ReceiverApp, host: str, port: int, shutdown_timeout: float
) -> uvicorn.Config:
    """uvloop and httptools when installed (``uvicorn[standard]``), else the pure-Python ones."""
    fast_loop = importlib.util.find_spec("uvloop") is not None
    fast_http = importlib.util.find_spec("httptools") is not None
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if fast_loop else "asyncio",
        http="httptools" if fast_http else "h11",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(1, shutdown_timeout)),
        backlog=2048,
    )
