"""``receiver track`` and ``receiver reconcile``: reconciliation from the command line.

``track`` registers tasks the product just submitted (Redis only); ``reconcile`` runs the
reconciler alone (Redis and the API key; no sink, no signing secret). ``serve`` and
``worker`` run a reconciler in-process when ``RECEIVER_RIVYA_API_KEY`` is set.
"""

from __future__ import annotations

import asyncio

import click

from receiver import ops
from receiver.cli.common import (
    EXIT_USAGE,
    fail,
    load_settings,
    require_existing_store,
    run_async,
    with_runtime,
)
from receiver.cli.output import print_json
from receiver.logs import get_logger

log = get_logger("receiver.cli")
# On SIGTERM, requests in flight get this long to settle; the rest are due again once
# their leases run out.
RECONCILE_STOP_GRACE_SECONDS = 10.0


@click.command()
@click.argument("task_ids", nargs=-1, metavar="TASK_ID...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def track(task_ids: tuple[str, ...], as_json: bool) -> None:
    """Watch tasks the product just submitted, so they are checked with Rivya's status API
    even if their webhook never comes (first check after RECEIVER_RECONCILE_AFTER)."""
    try:
        ops.check_task_ids(task_ids)
    except ops.TaskIdError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = load_settings()
    result = with_runtime(
        settings,
        lambda runtime: ops.track_tasks(
            runtime.store, task_ids, after_seconds=settings.reconcile_after_seconds
        ),
    )
    if as_json:
        print_json(result.to_json())
        return
    data = result.to_json()
    click.echo(
        f"tracking {data['tracked']} tasks ({data['already_watched']} already watched); "
        f"new ones are first checked at {data['first_check_at']}"
    )
    if settings.rivya_api_key is None:
        click.echo(
            "note: RECEIVER_RIVYA_API_KEY is not set here; a `receiver reconcile` (or a "
            "serve/worker with the key) must run for the checks to happen",
            err=True,
        )


@click.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics of this reconciler on this port.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Interface for --metrics-port (0.0.0.0 to let Prometheus scrape a pod).",
)
def reconcile(metrics_port: int | None, metrics_host: str) -> None:
    """Run the reconciler alone: poll Rivya's status API for watched tasks that are due."""
    settings = load_settings(service=True)
    settings.require_api_key()
    # It polls tasks the service's store watches: an empty Redis started here would have
    # none and poll nothing, silently (issue 14), so refuse like the other ops commands.
    require_existing_store(settings)

    async def run() -> None:
        import signal

        from receiver.reconcile.reconciler import Reconciler
        from receiver.runtime import Runtime

        runtime = await Runtime.open(settings)
        if metrics_port is not None:
            import prometheus_client

            from receiver.metrics import combined_registry

            prometheus_client.start_http_server(
                metrics_port, addr=metrics_host, registry=combined_registry()
            )
        reconciler = Reconciler(runtime)
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        task = asyncio.create_task(reconciler.run())
        stop_waiter = asyncio.create_task(stop_requested.wait())
        await asyncio.wait({task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            stop_waiter.cancel()
            error = task.exception()
            log.error("reconciler_crashed", error=type(error).__name__ if error else "returned")
            await runtime.aclose()
            fail("the reconciler stopped unexpectedly; see the log")
        await reconciler.stop(min(RECONCILE_STOP_GRACE_SECONDS, settings.shutdown_timeout_seconds))
        await task
        await runtime.aclose()

    run_async(run)


__all__ = ["reconcile", "track"]
