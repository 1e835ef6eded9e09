"""The admin listener's application: console pages, the JSON API, metrics, readiness.

It never serves webhooks, and the public app never serves any of this (SPEC §10): the
public port can face a load balancer without exposing operations. ``serve`` runs both
apps on one loop around one runtime; ``receiver console`` runs this one alone, with a
runtime of its own (Redis only: no signing secret, no sink writes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from receiver import ops
from receiver.app import liveness_response, metrics_response
from receiver.console import api, pages, rendering
from receiver.console.auth import Authenticator, SessionKey
from receiver.console.security import SecurityHeaders
from receiver.console.users import UserDirectory
from receiver.errors import ConfigError, RecordNotReadable
from receiver.logs import get_logger
from receiver.redaction import printable
from receiver.redis_client import REDIS_ERRORS
from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.sinks.base import Sink, open_sink

log = get_logger("receiver.console")
PACKAGE = resources.files("receiver.console")


def shown(value: Any) -> Any:
    """Every value a template prints, before escaping: control, bidi and separator
    characters of a signed event become visible ``\\xNN`` text, so a field can neither
    hide itself nor reorder what is shown around it (markup is escaped by autoescape)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, multiline=True)
    return value


def templates() -> Environment:
    """Jinja2 with autoescape on for every template: event fields are untrusted text."""
    environment = Environment(
        loader=FileSystemLoader(str(PACKAGE.joinpath("templates"))),
        autoescape=select_autoescape(default=True, default_for_string=True),
        enable_async=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=shown,
    )
    rendering.register_filters(environment)
    return environment


class AdminApp:
    """The ASGI app of the admin listener.

    ``runtime`` is the shared runtime of ``serve`` (its lifespan belongs to the public app)
    or None for ``receiver console``, whose own lifespan opens one.
    """

    def __init__(self, settings: Settings, *, runtime: Callable[[], Runtime] | None = None) -> None:
        self.settings = settings
        self._runtime_source = runtime
        self._own_runtime: Runtime | None = None
        self.users = UserDirectory(settings.admin_users_file)
        self._auth: Authenticator | None = None
        self._record_sink: Sink | None = None  # ``console`` alone: opened to read records
        self.templates = templates()
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
            Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Mount("/api/v1", routes=api.routes(self)),
            Mount(
                "/static", app=StaticFiles(directory=str(PACKAGE.joinpath("static"))), name="static"
            ),
            *pages.routes(self),
        ]
        self._starlette = Starlette(
            routes=routes,
            exception_handlers={HTTPException: self._http_error},  # type: ignore[dict-item]
        )
        self._app = SecurityHeaders(self._starlette)

    @property
    def routes(self) -> list[BaseRoute]:
        """The route table, as served (tests walk it so that a new route is covered)."""
        return self._starlette.routes

    def attach(self, runtime: Callable[[], Runtime]) -> None:
        """Use ``serve``'s runtime (built after this app, which checks the users file first)."""
        self._runtime_source = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime_source is not None:
            return self._runtime_source()
        if self._own_runtime is None:
            raise RuntimeError("the admin app's lifespan has not started")
        return self._own_runtime

    def _runtime_or_none(self) -> Runtime | None:
        try:
            return self.runtime
        except RuntimeError:  # asked before start-up finished
            return None

    @property
    def auth(self) -> Authenticator:
        if self._auth is None:  # built on first use: the runtime exists only from start-up
            self._auth = Authenticator(
                self.users,
                SessionKey(self.runtime.store.console),
                self.settings.admin_session_seconds,
            )
        return self._auth

    async def show_record(self, record_key: str, *, source: str | None) -> ops.RecordView:
        """The record as the sink holds it (``RecordNotReadable`` when it cannot say).

        ``serve`` reads through its worker's sink; ``console`` alone opens the configured
        sink once, for reading only."""
        runtime = self.runtime
        sink = runtime.sink
        if sink is None:
            if self._record_sink is None:
                try:
                    self._record_sink = open_sink(self.settings)
                except ConfigError as exc:
                    raise RecordNotReadable(f"the console cannot open the sink: {exc}") from None
            sink = self._record_sink
        return await ops.show_record(runtime.store, sink, record_key, source=source)

    def start_draining(self) -> None:
        """``console`` alone: readiness turns 503 while the server finishes."""
        if self._own_runtime is not None:
            self._own_runtime.draining = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._lifespan(self._starlette)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if self._own_runtime is None:
            self._own_runtime = await Runtime.open(self.settings)
        log.info("console_started", users=self.users.configured)
        try:
            yield
        finally:
            self._own_runtime.draining = True
            if self._record_sink is not None:
                await self._record_sink.aclose()
            await self._own_runtime.aclose()

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if exc.status_code == 404 and rendering.wants_html(request):
            return rendering.not_found(self, request)
        return JSONResponse({"error": code}, status_code=exc.status_code, headers=exc.headers)

    async def healthz(self, _request: Request) -> Response:
        # The same liveness as the public listener's: supervisors (Kubernetes, compose) ask
        # this port, and a dead in-process worker or embedded Redis needs a restart.
        return liveness_response(self._runtime_or_none())

    async def readyz(self, _request: Request) -> Response:
        """Detailed readiness (SPEC §10). Ready, as the public one, when Redis accepts writes
        and serve is not draining; the sink (the in-process worker's circuit) and the queue
        are detail: a sink outage must not take ingest out of the load balancer (SPEC §3)."""
        runtime = self.runtime
        result = await runtime.readiness.check()
        detail: dict[str, Any] = {
            "redis": "ok" if result.ready else result.reason,
            "draining": runtime.draining,
        }
        if runtime.sink_failing is not None:
            detail["sink"] = "circuit_open" if runtime.sink_failing() else "ok"
        if result.ready:
            with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
                detail["queue"] = await asyncio.wait_for(
                    runtime.store.queue_stats(), runtime.settings.redis_timeout_seconds
                )
        if runtime.draining:
            return JSONResponse({"error": "shutting_down", **detail}, status_code=503)
        if not result.ready:
            return JSONResponse(
                {"error": "not_ready", "failed": ["redis"], **detail}, status_code=503
            )
        return JSONResponse({"status": "ready", **detail})

    async def metrics(self, _request: Request) -> Response:
        return await metrics_response(self.runtime)


Handler = Callable[[Request], Awaitable[Response]]


def create_admin_app(
    settings: Settings, *, runtime: Callable[[], Runtime] | None = None
) -> AdminApp:
    """The admin listener's app; ``runtime`` shares ``serve``'s, None opens its own."""
    return AdminApp(settings, runtime=runtime)
