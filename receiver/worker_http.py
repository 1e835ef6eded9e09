"""The worker's own small HTTP listener (``receiver worker --metrics-port``).

``/metrics`` (this process's Prometheus series), ``/healthz`` (the worker loop runs and
its housekeeping ticks) and ``/readyz`` (Redis reachable and the sink's circuit closed):
the sink's health belongs to the worker, never to ingest (issue 13). The server runs on
the worker's own event loop, so an answer also proves that loop is not blocked; readiness
is read from the worker's state, never probed per request, so probes cannot flap it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import prometheus_client
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver.server import uvicorn_config
from receiver.worker import Worker


def create_worker_app(worker: Worker) -> Starlette:
    """The routes of a worker's listener."""

    async def healthz(_request: Request) -> Response:
        if not worker.alive():
            return JSONResponse({"error": "worker_stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        failed = worker.not_ready()
        if failed:
            return JSONResponse({"error": "not_ready", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(_request: Request) -> Response:
        return Response(
            prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
        )

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/readyz", readyz, methods=["GET", "HEAD"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class _SignalFreeServer(uvicorn.Server):
    """uvicorn without its signal handlers: the worker command owns SIGTERM and SIGINT
    (uvicorn would take them over and re-raise them when it stops)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WorkerListener:
    """The listener on an already bound socket, so a taken port is a clean start-up error."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.port = int(self._socket.getsockname()[1])
        # The same bounded protocol as serve's listeners (header budget, read deadlines,
        # connection cap): a worker's port is reachable from the monitoring namespace.
        config = uvicorn_config(create_worker_app(worker), host, self.port, worker.settings)
        config.lifespan = "off"
        self._server = _SignalFreeServer(config)

    async def serve(self) -> None:
        """Serve until ``close()``."""
        await self._server.serve(sockets=[self._socket])

    def close(self) -> None:
        self._server.should_exit = True
