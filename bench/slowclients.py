"""Hold N slow or oversized connections open against a server, as an attacker would.

    python bench/slowclients.py --port P [--bodies 200] [--headers 200] [--oversized 100]
                                [--duration 20] [--body-bytes 262144] [--header-bytes 32768]
                                [--ramp 0]

Three kinds of connection, each replaced as soon as the server closes it, so the number
held stays at the total for the whole run:

- ``bodies``: prompt headers declaring ``--body-bytes``, all of the body but 100 bytes at
  once, then one more byte every second, never completing it (the most memory a
  connection can make the server hold);
- ``headers``: a request line and ``--header-bytes`` minus 200 of header at once, then a
  header byte every second (slowloris);
- ``oversized``: twice ``--header-bytes`` of header in one go, read the answer, wait a second,
  again.

Oversized senders are refused at once by a bounded server, so only the slow ones can be held:
it prints ``READY <open>`` once every slow connection is open, and at the end one JSON line:
answers by status, reconnects, and the fewest and most slow connections open at once after
READY (each is replaced when the server's read deadline closes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import uvloop

HEAD = b"POST /webhooks/rivya HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"


class Stats:
    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.open = 0  # slow connections (bodies, headers) open now
        self.reconnects = 0
        self.min_open: int | None = None
        self.max_open = 0

    def opened(self, kind: str) -> None:
        if kind != "oversized":
            self.open += 1
            self.max_open = max(self.max_open, self.open)

    def closed(self, kind: str, counting: bool) -> None:
        if kind != "oversized":
            self.open -= 1
            if counting:
                self.min_open = (
                    self.open if self.min_open is None else min(self.min_open, self.open)
                )


async def first_line(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "closed"


async def hold(kind: str, args: argparse.Namespace, stats: Stats, stop: asyncio.Event,
               ready: asyncio.Event) -> None:  # fmt: skip
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        except OSError:
            stats.statuses["connect_error"] += 1
            await asyncio.sleep(0.1)
            continue
        stats.opened(kind)
        try:
            if kind == "bodies":
                writer.write(HEAD + b"content-length: %d\r\n\r\n" % args.body_bytes)
                writer.write(b"a" * (args.body_bytes - 100))
            elif kind == "headers":
                writer.write(HEAD + b"x-slow: " + b"a" * (args.header_bytes - 200))
            else:
                writer.write(HEAD + b"x-big: " + b"a" * (2 * args.header_bytes) + b"\r\n\r\n")
            await writer.drain()
            answer = asyncio.ensure_future(first_line(reader))
            while not answer.done() and not stop.is_set():
                done, _ = await asyncio.wait({answer}, timeout=1.0)
                if not done and kind != "oversized":
                    writer.write(b"a")  # one more byte a second: never complete
            if answer.done():
                stats.statuses[answer.result()] += 1
            else:
                answer.cancel()
        except (OSError, asyncio.IncompleteReadError):
            stats.statuses["reset"] += 1
        finally:
            writer.close()
            stats.closed(kind, ready.is_set() and not stop.is_set())
        if not stop.is_set():
            stats.reconnects += 1
            if kind == "oversized":
                await asyncio.sleep(1.0)


async def main(args: argparse.Namespace) -> None:
    stats = Stats()
    stop, ready = asyncio.Event(), asyncio.Event()
    kinds = ["bodies"] * args.bodies + ["headers"] * args.headers + ["oversized"] * args.oversized
    tasks = []
    pause = args.ramp / len(kinds) if args.ramp else 0.0
    for index, kind in enumerate(kinds):
        tasks.append(asyncio.create_task(hold(kind, args, stats, stop, ready)))
        if pause:
            await asyncio.sleep(pause)
        elif index % 50 == 49:
            await asyncio.sleep(0.05)  # let the server accept them in batches
    deadline = time.monotonic() + 30
    slow = args.bodies + args.headers
    while stats.open < slow and time.monotonic() < deadline:  # noqa: ASYNC110 - a count
        await asyncio.sleep(0.05)
    ready.set()
    print(f"READY {stats.open}", flush=True)
    await asyncio.sleep(args.duration)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(
        json.dumps(
            {
                "connections": len(kinds),
                "slow": slow,
                "statuses": dict(stats.statuses),
                "reconnects": stats.reconnects,
                "min_open": stats.min_open,
                "max_open": stats.max_open,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bodies", type=int, default=200)
    parser.add_argument("--headers", type=int, default=200)
    parser.add_argument("--oversized", type=int, default=100)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--body-bytes", type=int, default=262_144)
    parser.add_argument("--header-bytes", type=int, default=32_768)
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="open the connections over this many seconds (default 0: all at once, so "
        "their read deadlines fire together)",
    )
    uvloop.run(main(parser.parse_args()))
