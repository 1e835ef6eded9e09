"""Open-loop load at a fixed rate, latency measured from each request's *intended* send time.

wrk is closed-loop: a connection waits for its answer before sending again, so a stall hides
the requests that should have been sent during it (coordinated omission), and its per-request
``delay()`` pacing inherits the same flaw. Here request ``i`` is due at ``t0 + i/rate`` no matter
what happened before; it goes out on any idle keep-alive connection (up to ``--connections``),
and its latency runs from the due time, so queueing behind a slow answer counts (as in wrk2).

At 1,000 req/s this client needs well under 10% of one core (raw HTTP/1.1 over asyncio
streams on uvloop, requests pre-built); the same client measures the floor, so its own cost
shows up in the floor's figures too.

``python bench/openloop.py --port P --requests FILE --rate 1000 --duration 10`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from pathlib import Path

import uvloop

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def build_requests(path: str, host: str, lines: list[str]) -> list[bytes]:
    out = []
    for line in lines:
        event_id, ts, sig, body = line.rstrip("\n").split("\t", 3)
        raw = body.encode()
        out.append(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"webhook-id: {event_id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {sig}\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n"
            ).encode()
            + raw
        )
    return out


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def run(args: argparse.Namespace) -> dict[str, object]:
    # Read once before the load starts: blocking here costs nothing measured.
    lines = Path(args.requests).read_text(encoding="utf-8").splitlines(keepends=True)  # noqa: ASYNC240
    requests = build_requests(args.path, f"127.0.0.1:{args.port}", lines)
    total = int(args.rate * args.duration)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                index, due = item
                try:
                    writer.write(requests[index % len(requests)])
                    head = await reader.readuntil(b"\r\n\r\n")
                    match = CONTENT_LENGTH.search(head)
                    if match:
                        await reader.readexactly(int(match.group(1)))
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    errors[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                    continue
                latencies.append(time.perf_counter() - due)
                statuses[int(head[9:12])] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(connection()) for _ in range(args.connections)]
    await asyncio.sleep(0.3)  # connections established before the clock starts
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        due_now = min(total, int((time.perf_counter() - t0) * args.rate) + 1)
        while sent < due_now:
            queue.put_nowait((sent, t0 + sent / args.rate))
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / args.rate - time.perf_counter()))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "sent": total,
        "completed": len(latencies),
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "p999_ms": round(percentile(latencies, 99.9) * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", required=True)
    parser.add_argument("--path", default="/webhooks/rivya")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
