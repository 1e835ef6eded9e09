"""``receiver serve`` and ``receiver worker``: the long-running processes.

``serve`` needs the signing secrets (it verifies deliveries) and, with its in-process
worker, the sink; ``worker`` needs only Redis and the sink (issue 14).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from receiver.cli.common import (
    SIGNING,
    fail,
    load_settings,
    require_existing_store,
    run_async,
)
from receiver.logs import get_logger

if TYPE_CHECKING:
    from receiver.console import AdminApp
    from receiver.settings import Settings
    from receiver.worker_http import WorkerListener

log = get_logger("receiver.cli")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--no-worker", is_flag=True, help="Only receive; run workers with `receiver worker`.")
def serve(host: str, port: int, no_worker: bool) -> None:
    """Run the HTTP service (and a worker, unless --no-worker)."""
    settings = load_settings(service=True, needs=(SIGNING,))

    async def run() -> None:
        from receiver.app import create_app
        from receiver.runtime import Runtime
        from receiver.server import (
            CompanionServer,
            GracefulServer,
            ListenError,
            bind,
            serve_together,
            uvicorn_config,
        )

        try:
            public_socket = bind(host, port)
            admin_socket = bind(*settings.admin_addr) if settings.admin_addr else None
        except ListenError as exc:
            fail(str(exc))
        admin = _admin_app(settings) if admin_socket is not None else None
        runtime = await Runtime.open(
            settings, with_sink=True, adopt_orphan=True, check_durability=True, supervise=True
        )
        app = create_app(settings, run_worker=not no_worker, runtime=runtime)
        config = uvicorn_config(app, host, port, settings)
        server = GracefulServer(config, app, settings.shutdown_drain_seconds)
        companions = []
        if admin is not None and admin_socket is not None:
            admin.attach(lambda: runtime)
            admin_host, admin_port = admin_socket.getsockname()[:2]
            admin_config = uvicorn_config(admin, admin_host, admin_port, settings)
            companions.append((CompanionServer(admin_config), admin_socket))
            log.info("admin_listening", addr=f"{admin_host}:{admin_port}")
        if settings.embedded_redis and runtime.embedded is not None:
            log.info("embedded_redis", socket=str(runtime.embedded.socket_path))
        log.info("listening", addr=f"{host}:{port}")
        await serve_together(server, public_socket, companions, app.lifespan())

    run_async(run)


def _admin_app(settings: Settings) -> AdminApp:
    from receiver.console import create_admin_app

    return create_admin_app(settings)


@click.command()
def console() -> None:
    """Run the admin listener alone: the console, its API, /metrics (Redis only)."""
    settings = load_settings(service=True)
    if settings.admin_addr is None:
        fail("RECEIVER_ADMIN_ADDR is empty: the console has no address to listen on")
    # The console only reads and acts on a store the service made: started in the wrong
    # directory it would show an empty Redis as "no events" (issue 14), so refuse.
    require_existing_store(settings)
    host, port = settings.admin_addr

    async def run() -> None:
        from receiver.server import (
            GracefulServer,
            ListenError,
            bind,
            serve_together,
            uvicorn_config,
        )

        try:
            admin_socket = bind(host, port)
        except ListenError as exc:
            fail(str(exc))
        admin = _admin_app(settings)
        config = uvicorn_config(admin, host, port, settings)
        server = GracefulServer(config, admin, 0)
        log.info("admin_listening", addr=f"{host}:{port}")
        await serve_together(server, admin_socket, [], admin.lifespan())

    run_async(run)


@click.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this worker's /metrics, /healthz and /readyz on this port.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Interface for --metrics-port (0.0.0.0 to let Prometheus and probes reach a pod).",
)
def worker(metrics_port: int | None, metrics_host: str) -> None:
    """Run a worker alone (several may run side by side)."""
    settings = load_settings(service=True)

    async def run() -> None:
        import signal

        from receiver.app import RECONCILER_GRACE_SECONDS
        from receiver.reconcile.reconciler import Reconciler
        from receiver.runtime import Runtime
        from receiver.worker import Worker
        from receiver.worker_http import WorkerListener

        runtime = await Runtime.open(settings, with_sink=True, check_durability=True)
        assert runtime.sink is not None
        consumer = Worker(runtime, runtime.sink)
        listener: WorkerListener | None = None
        if metrics_port is not None:
            try:
                listener = WorkerListener(consumer, metrics_host, metrics_port)
            except OSError as exc:
                await runtime.aclose()
                fail(f"could not listen on {metrics_host}:{metrics_port}: {exc.strerror}")
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        task = asyncio.create_task(consumer.run())
        serving = asyncio.create_task(listener.serve()) if listener is not None else None
        # Issue 16: with the API key, this process also reconciles watched tasks.
        reconciler = Reconciler(runtime) if settings.rivya_api_key is not None else None
        reconciling = asyncio.create_task(reconciler.run()) if reconciler is not None else None
        stop_waiter = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if reconciler is not None and reconciling is not None:
            await reconciler.stop(min(RECONCILER_GRACE_SECONDS, settings.shutdown_timeout_seconds))
            await reconciling
        if task.done():
            # The worker loop only ends on stop(): anything else is a bug. Exit non-zero so
            # the supervisor restarts the process instead of leaving it idle.
            stop_waiter.cancel()
            error = task.exception()
            log.error("worker_crashed", error=type(error).__name__ if error else "returned")
            await _close_listener(listener, serving)
            await runtime.aclose()
            fail("the worker stopped unexpectedly; see the log")
        await consumer.stop(settings.shutdown_timeout_seconds)
        await task
        # The listener goes last: /healthz and /metrics answer while the events are handed back.
        await _close_listener(listener, serving)
        await runtime.aclose()

    run_async(run)


async def _close_listener(
    listener: WorkerListener | None, serving: asyncio.Task[None] | None
) -> None:
    if listener is not None and serving is not None:
        listener.close()
        await serving
