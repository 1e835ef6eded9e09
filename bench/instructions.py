"""Instructions per webhook request on the in-process request path, counted by callgrind.

Usage: python bench/instructions.py [--stub accept,map,verify,metrics,log] [--path worker]

Timings on a shared 2-core VM move by ±20% from run to run; instruction counts do not
(two runs agree to ~0.1%), so this is the A/B tool for a change to the request path. It
starts its own redis-server and runs the app's ASGI callable directly (no uvicorn, no
sockets to the client) under ``valgrind --tool=callgrind`` four times: 300 and 1,300
requests, each with and without serving them, and prints
``((serve 1300 - serve 300) - (setup 1300 - setup 300)) / 1000``, so imports, start-up
and request generation cancel out. ``--stub`` replaces parts with no-ops to show what each
costs (the difference from the plain run). ``--path worker`` counts the worker instead:
the deliveries are served in every run, and a worker applies them (SQLite sink) in the
measured ones. Needs valgrind (Debian package ``valgrind``).

Crypto under valgrind takes OpenSSL's generic code path, which overstates verification.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONCURRENCY = 64


def _apply_stubs(stubs: set[str]) -> None:
    """Replace the named parts of the request path with (almost) free stand-ins."""
    import datetime

    from receiver import ingest, metrics
    from receiver.models import Record
    from receiver.signing import Verified, Verifier
    from receiver.store import AcceptResult, EventStore

    class Nothing:
        def inc(self, *_: Any) -> None: ...

        def observe(self, *_: Any) -> None: ...

    if "metrics" in stubs:
        metrics.child = lambda *_: Nothing()  # type: ignore[assignment]
        metrics.REQUEST_DURATION = Nothing()  # type: ignore[assignment]
    if "verify" in stubs:
        Verifier.verify = lambda self, headers, body, now: Verified(  # type: ignore[method-assign]
            headers["webhook-id"], int(headers["webhook-timestamp"])
        )
    if "map" in stubs:
        record = Record(
            record_key="task_x",
            status="succeeded",
            source_updated_at=datetime.datetime.now(datetime.UTC),
            last_event_id="x",
        )
        ingest.identify = lambda _: ("generation.succeeded", record.record_key)  # type: ignore[assignment]
        ingest.parse_body = lambda _: {"data": {"id": "x", "status": "succeeded"}}  # type: ignore[assignment]
    if "accept" in stubs:

        async def accept(self: EventStore, event: Any) -> AcceptResult:
            return AcceptResult.NEW

        EventStore.accept = accept  # type: ignore[method-assign]


def inner(requests: int, serve: bool, redis_url: str, stubs: set[str], path: str) -> None:
    """The measured program: generate ``requests`` signed deliveries, then serve them.

    With ``path == "worker"`` the deliveries are always served, and ``serve`` says whether
    a worker then applies them (SQLite sink), so the difference is the worker's share.
    """
    import uvloop

    from receiver.app import create_app
    from receiver.logs import configure_logging
    from receiver.runtime import Runtime
    from receiver.settings import Settings
    from tests.factories import base_env, event_body, signed_headers

    _apply_stubs(stubs)
    workdir = tempfile.mkdtemp()
    sink = f"sqlite:///{workdir}/records.db" if path == "worker" else "log:"
    settings = Settings.from_env(base_env(workdir, redis_url, RECEIVER_SINK=sink))
    configure_logging("warning" if "log" in stubs else "info", "json")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the log lines go nowhere
    deliveries = []
    for _ in range(requests):
        body = event_body()
        headers = [(k.encode(), v.encode()) for k, v in signed_headers(body).items()]
        deliveries.append((headers, body))

    async def main() -> None:
        runtime = await Runtime.open(settings, with_sink=True)
        app = create_app(settings, run_worker=False, runtime=runtime)

        async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                return messages.pop()

            async def send(_message: dict[str, Any]) -> None:
                pass

            scope = {"type": "http", "method": "POST", "path": "/webhooks/rivya"}
            await app({**scope, "headers": headers, "query_string": b""}, receive, send)

        async def lane(first: int) -> None:
            for n in range(first, requests, CONCURRENCY):
                await one(*deliveries[n])

        if serve or path == "worker":
            await asyncio.gather(*(lane(k) for k in range(CONCURRENCY)))
        if serve and path == "worker":
            await drain(runtime)
        await runtime.aclose()

    uvloop.run(main())


async def drain(runtime: Any) -> None:
    """Run one worker until the queue is empty."""
    from receiver.keys import all_shards
    from receiver.worker import Worker

    assert runtime.sink is not None
    await runtime.sink.setup()
    worker = Worker(runtime, runtime.sink)
    task = asyncio.create_task(worker.run())
    # Polled rarely: what the polls cost grows with time, not with events.
    while await runtime.client.xlen(all_shards(1)[0].stream):  # noqa: ASYNC110 - Redis state
        await asyncio.sleep(0.25)
    await worker.stop(5)
    await task


def count(requests: int, serve: bool, redis_url: str, stubs: str, path: str) -> int:
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--inner",
        str(requests),
        "--redis-url",
        redis_url,
        "--stub",
        stubs,
        "--path",
        path,
        *([] if serve else ["--setup-only"]),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    line = next(line for line in result.stderr.splitlines() if "Collected :" in line)
    return int(line.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stub", default="", help="comma-separated: accept,map,verify,metrics,log")
    parser.add_argument(
        "--path",
        choices=("ingest", "worker"),
        default="ingest",
        help="ingest: the webhook request; worker: applying one event (SQLite sink)",
    )
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    stubs = {name for name in args.stub.split(",") if name}
    if args.inner is not None:
        inner(args.inner, not args.setup_only, args.redis_url, stubs, args.path)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install -y valgrind)")
    from tests.redis_proc import RedisProcess

    with RedisProcess(Path(tempfile.mkdtemp()) / "redis") as server:
        small, large = 300, 1300
        served = count(large, True, server.url, args.stub, args.path) - count(
            small, True, server.url, args.stub, args.path
        )
        setup = count(large, False, server.url, args.stub, args.path) - count(
            small, False, server.url, args.stub, args.path
        )
    per_request = (served - setup) // (large - small)
    command = " ".join(["python bench/instructions.py", *sys.argv[1:]])
    unit = "applied event (worker" if args.path == "worker" else "request (in-process path"
    print(f"{command}: {per_request:,} instructions per {unit}, callgrind)")


if __name__ == "__main__":
    main()
