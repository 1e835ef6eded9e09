"""The floor: the cheapest ASGI apps that answer a webhook POST, under the same uvicorn flags.

``python bench/floor.py bare --port 8101``: a raw ASGI callable that reads the whole body and
answers ``202 {"status":"accepted"}`` (no verification, no storage, no logging).
``python bench/floor.py starlette --port 8102``: the same as one Starlette route, for reference.

uvicorn is configured like ``receiver serve`` (receiver/server.py: uvloop, httptools, no
access log, no server header, backlog 2048) but with uvicorn's own httptools protocol, so the
ratio ours/floor isolates our own work, the bounds of receiver/http_protocol.py included;
``--protocol bounded`` runs the floor under our protocol instead, to price those bounds.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn

BODY = orjson.dumps({"status": "accepted", "event_id": "msg_0000000000000000"})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # read the body, as any real handler must
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def starlette_app():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(BODY, status_code=202, media_type="application/json")

    return Starlette(routes=[Route("/webhooks/{source}", webhook, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("bare", "starlette"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--protocol",
        choices=("httptools", "bounded"),
        default="httptools",
        help="uvicorn's httptools protocol, or ours with its limits (to price the limits)",
    )
    args = parser.parse_args()
    app = bare if args.kind == "bare" else starlette_app()
    http: object = "httptools"
    if args.protocol == "bounded":
        from receiver.http_protocol import HttpLimits, bounded_protocol

        http = bounded_protocol(HttpLimits())
    # Same settings as receiver.server.uvicorn_config.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=http,  # type: ignore[arg-type]
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        backlog=2048,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
