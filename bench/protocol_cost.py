"""Instructions per request in the HTTP protocol alone: uvicorn's httptools protocol vs ours.

Usage: python bench/protocol_cost.py

The bounds of receiver/http_protocol.py run on every request, so their price is measured
where timings cannot see it (a ±20% noisy machine, a cost of ~1%): callgrind counts the
instructions of feeding keep-alive requests (one 689-byte signed delivery per read, as a
sender writes them) through each protocol class with the floor's bare ASGI app behind it
and a transport that only counts writes. Each class runs under
``valgrind --tool=callgrind`` with 300 and 1,300 requests; the difference / 1,000 is its
cost per request, start-up cancelled out. ``PYTHONHASHSEED=0`` makes runs repeat exactly.
Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BODY = (
    b'{"id":"evt_0","type":"generation.succeeded","api_version":"2026-05-11",'
    b'"created_at":"2026-05-10T00:01:00.000Z","data":{"id":"task_0","status":"succeeded"}}'
).ljust(689, b" ")  # the size of the bench's deliveries; the floor app does not parse it
REQUEST = (
    b"POST /webhooks/rivya HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"webhook-id: msg_0123456789abcdef0123456789abcdef\r\nwebhook-timestamp: 1778371260\r\n"
    b"webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class CountingTransport(asyncio.Transport):
    """Just enough of a transport for uvicorn's protocol: writes are counted, not sent."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def serve_requests(kind: str, count: int) -> None:
    import uvicorn
    from floor import bare
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from receiver.http_protocol import HttpLimits, bounded_protocol

    protocol_class = HttpToolsProtocol if kind == "httptools" else bounded_protocol(HttpLimits())
    config = uvicorn.Config(bare, lifespan="off", log_config=None, access_log=False, ws="none")
    config.load()
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = CountingTransport()
    protocol.connection_made(transport)
    for _ in range(count):
        answered = transport.writes + 2  # the answer's head and its body
        protocol.data_received(REQUEST)
        while transport.writes < answered:  # noqa: ASYNC110 - let the app's task run, cheaply
            await asyncio.sleep(0)
    protocol.connection_lost(None)


def instructions(kind: str, count: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", kind, str(count)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--run"]:
        import uvloop

        uvloop.run(serve_requests(sys.argv[2], int(sys.argv[3])))
        return
    costs = {}
    for kind in ("httptools", "bounded"):
        costs[kind] = (instructions(kind, 1300) - instructions(kind, 300)) / 1000
        print(f"{kind:9s} {costs[kind]:>9,.0f} instructions per request", flush=True)
    extra = costs["bounded"] - costs["httptools"]
    print(f"bounds cost {extra:,.0f} instructions per request ({extra / costs['httptools']:.1%})")


if __name__ == "__main__":
    main()
