"""Real servers for tests: the app under uvicorn in a thread, or ``receiver serve`` as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import uvicorn

from receiver.app import create_app
from receiver.console import AdminApp, create_admin_app
from receiver.server import (
    CompanionServer,
    GracefulServer,
    bind,
    serve_together,
    uvicorn_config,
)
from receiver.settings import Settings
from tests.conftest import free_port, wait_for_port


class ServiceThread:
    """``create_app(settings)`` served on a real socket in a background thread, under the same
    uvicorn configuration as ``receiver serve`` (the bounded protocol included).

    With ``admin=True`` the admin listener (console, API, metrics) runs beside it on its own
    port, around the same runtime, as ``receiver serve`` runs them.
    """

    def __init__(
        self, settings: Settings, *, run_worker: bool = False, admin: bool = False
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port() if admin else None
        self.app = create_app(settings, run_worker=run_worker)
        self.server = GracefulServer(self._config(self.app, self.port, settings), self.app, 0)
        self.admin_app: AdminApp | None = None
        self._admin_server: CompanionServer | None = None
        if self.admin_port is not None:
            self.admin_app = create_admin_app(settings)
            self.admin_app.attach(lambda: self.app.runtime)
            admin_config = self._config(self.admin_app, self.admin_port, settings)
            self._admin_server = CompanionServer(admin_config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _config(app: Any, port: int, settings: Settings) -> uvicorn.Config:
        config = uvicorn_config(app, "127.0.0.1", port, settings)
        config.timeout_graceful_shutdown = 5
        return config

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, "started without admin=True"
        return f"http://127.0.0.1:{self.admin_port}"

    def _run(self) -> None:
        companions = []
        if self._admin_server is not None and self.admin_port is not None:
            companions.append((self._admin_server, bind("127.0.0.1", self.admin_port)))
        asyncio.run(
            serve_together(
                self.server, bind("127.0.0.1", self.port), companions, self.app.lifespan()
            )
        )

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        deadline = time.monotonic() + 15
        servers = [self.server] + ([self._admin_server] if self._admin_server else [])
        while not all(server.started for server in servers):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test service did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(20)


class ServiceProcess:
    """``python -m receiver <command>`` as a real process with its output in a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        *args: str,
        port: int | None = None,
        admin: bool = False,
    ) -> None:
        self.env = env
        self.port = port if port is not None else free_port()
        # The admin listener on a free port of its own (``admin_url``), or off.
        self.admin_port = free_port() if admin else None
        if self.admin_port is not None:
            self.env = {**env, "RECEIVER_ADMIN_ADDR": f"127.0.0.1:{self.admin_port}"}
        args = args or ("serve",)
        if args[0] == "serve" and "--port" not in args:
            args = (*args, "--port", str(self.port))
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        assert self.admin_port is not None, "started without admin=True"
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait: bool = True) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "receiver", *self.args],
            env=self.env
            if self.admin_port is not None
            else {"RECEIVER_ADMIN_ADDR": "", **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if wait and self.args[0] in ("serve", "console"):
            try:
                if self.args[0] == "serve":
                    wait_for_port(self.port, 30)
                if self.admin_port is not None:
                    wait_for_port(self.admin_port, 30)
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"service did not start:\n{self.output()}") from None
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crash or an OOM kill."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def stop(self, timeout: float = 30) -> int | None:
        if self.process is None or self.process.poll() is not None:
            if self._log is not None:
                self._log.close()
                self._log = None
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def python_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("RECEIVER_")}


class Downstream:
    """A real HTTP server standing in for the downstream system of the HTTP sink.

    It answers with ``statuses`` in turn (the last one repeats) and records what it got.
    A test may replace ``statuses`` (``[503]``: down, ``[200]``: back) and set ``delay``
    (seconds every POST waits before its answer) while it runs. ``HEAD`` always gets 200,
    like a downstream whose front answers while its writes fail. Answers of 400 and above
    carry ``body`` (empty by default).
    """

    def __init__(self, *statuses: int, first_delay: float = 0.0, body: bytes = b"") -> None:
        self.statuses = list(statuses) or [200]
        self.first_delay = first_delay
        self.delay = 0.0
        self.body = body
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.methods: list[str] = []  # every request's method, HEAD probes included
        self.port = free_port()
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
        return f"http://127.0.0.1:{self.port}/records"

    async def _app(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.methods.append(scope["method"])
        if scope["method"] == "POST":
            self.requests.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
        index = (
            min(len(self.requests) - 1, len(self.statuses) - 1) if scope["method"] == "POST" else -1
        )
        status = self.statuses[max(index, 0)] if scope["method"] == "POST" else 200
        if scope["method"] == "POST" and len(self.requests) == 1 and self.first_delay:
            await asyncio.sleep(self.first_delay)  # a slow downstream holds the first event
        if scope["method"] == "POST" and self.delay:
            await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": self.body if status >= 400 else b""})

    def __enter__(self) -> Downstream:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)
