"""Measure the Redis memory one stored event costs, for capacity planning (README).

Usage: python bench/memory.py [--events 20000] [--encrypted]

Starts its own redis-server, stores N realistic ~700-byte events through the real accept
script, finishes each one as the worker does (so the history holds two entries), and
prints used_memory per event and what a month of traffic at a few rates would need.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from receiver.bodies import BodyCipher
from receiver.embedded import COMPACT_HASH_VALUE_BYTES
from receiver.models import EventState
from receiver.redaction import Secret
from receiver.store import EventStore, IncomingEvent, now_ms
from tests.factories import event_body
from tests.redis_proc import RedisProcess


async def fill(url: str, events: int, cipher: BodyCipher) -> None:
    client = aioredis.Redis.from_url(url)
    store = EventStore(client, retention_seconds=30 * 86400)
    await store.prepare()
    for start in range(0, events, 500):
        batch = []
        for n in range(start, min(start + 500, events)):
            body = event_body(task_id=f"task_{n:08d}")
            sealed, encrypted = cipher.seal(body)
            batch.append(IncomingEvent(
                source="rivya", event_id=f"msg_{n:08d}_{'x' * 20}", body=sealed,
                body_sha256=hashlib.sha256(body).hexdigest(), encrypted=encrypted,
                received_ms=now_ms(), signed_ts=int(time.time()),
                event_type="generation.succeeded", record_key=f"task_{n:08d}",
                state=EventState.PENDING,
            ))  # fmt: skip
        await asyncio.gather(*(store.accept(event) for event in batch))
        entries = await store.read("memory-bench", len(batch), 100)
        await asyncio.gather(*(store.finish(e, e.member, EventState.APPLIED, 1) for e in entries))
    await store.aclose()
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--encrypted", action="store_true")
    parser.add_argument(
        "--hash-max-value",
        type=int,
        default=COMPACT_HASH_VALUE_BYTES,
        help="hash-max-ziplist-value (the embedded Redis and deploy/redis.conf use 4096; "
        "Redis's own default is 64)",
    )
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    cipher = BodyCipher([Secret(Fernet.generate_key().decode())] if args.encrypted else [])
    with RedisProcess(Path(tempfile.mkdtemp(prefix="rcv-mem-"))) as server:
        probe = redis.Redis(port=server.port)
        probe.config_set("hash-max-ziplist-value", args.hash_max_value)
        before = int(probe.info("memory")["used_memory"])
        asyncio.run(fill(server.url, args.events, cipher))
        after = int(probe.info("memory")["used_memory"])
        version = probe.info("server")["redis_version"]
    per_event = (after - before) / args.events
    body_size = len(event_body(task_id="task_00000000"))
    flags = " --encrypted" if args.encrypted else ""
    print(
        f"command: python bench/memory.py --events {args.events}{flags}"
        f" --hash-max-value {args.hash_max_value}"
    )
    print(f"redis {version}; body {body_size} bytes; encrypted={args.encrypted}")
    print(f"used_memory per stored event: {per_event:,.0f} bytes")
    for rate in (10, 100, 1000):
        month = per_event * rate * 86400 * 30
        print(
            f"  {rate:>5} events/s for 30 days ({rate * 86400 * 30:,} events): "
            f"{month / 2**30:,.1f} GiB"
        )


if __name__ == "__main__":
    main()
