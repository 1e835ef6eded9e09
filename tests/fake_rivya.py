"""A fake of Rivya's status API, the outside world the reconciler talks to: a real HTTP
server (uvicorn in a thread, on a socket), scripted per task, recording every request.

``GET /api/v1/generations/{task id}`` answers the task's script one reply at a time (the
last one repeats); tasks without a script get a JSON 404. Each request is recorded when
it arrives (time, headers) and completed when answered (status, end time), and the fake
counts how many requests for one task were in flight at once, so tests can prove no task
was ever polled twice at the same time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import uvicorn

from tests.conftest import free_port, wait_for_port

PATH = "/api/v1/generations/"


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status, a JSON body (a generation, usually), a delay."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of ``body``

    @classmethod
    def of(cls, generation: dict[str, Any], delay: float = 0.0) -> Reply:
        return cls(200, generation, delay)


@dataclass
class Seen:
    """One request, recorded when it arrives; ``finished``/``status`` once answered."""

    task_id: str
    started: float  # time.monotonic()
    headers: dict[str, str]
    finished: float = 0.0
    status: int = 0


class FakeRivya:
    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._served: dict[str, int] = defaultdict(int)
        self._in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.seen: list[Seen] = []
        self.override: Reply | None = None  # answers every request when set
        config = uvicorn.Config(
            self._app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="off",
            interface="asgi3",
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve()), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, task_id: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[task_id] = list(replies)
            self._served[task_id] = 0

    def requests_for(self, task_id: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.task_id == task_id]

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def _next(self, task_id: str) -> Reply:
        with self._lock:
            if self.override is not None:
                return self.override
            script = self._scripts.get(task_id)
            if not script:
                return Reply(404, {"error": {"code": "not_found", "message": "no such task"}})
            index = min(self._served[task_id], len(script) - 1)
            self._served[task_id] += 1
            return script[index]

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        path = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PATH):
            await _send(send, 404, b'{"error":"not_found"}', {})
            return
        task_id = unquote(scope.get("raw_path", path.encode()).decode()[len(PATH) :])
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen = Seen(task_id, started, headers)
        with self._lock:
            self.seen.append(seen)
            self._in_flight[task_id] += 1
            self.max_in_flight[task_id] = max(self.max_in_flight[task_id], self._in_flight[task_id])
        reply = self._next(task_id)
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            body = reply.raw if reply.raw is not None else orjson.dumps(reply.body)
            await _send(send, reply.status, body, reply.headers)
        finally:
            with self._lock:
                self._in_flight[task_id] -= 1
                seen.finished, seen.status = time.monotonic(), reply.status

    def __enter__(self) -> FakeRivya:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)


async def _send(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw_headers = [(b"content-type", b"application/json")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
