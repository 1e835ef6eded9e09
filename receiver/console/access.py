"""Who may make a request, checked the same way for pages and API (SPEC §10).

Reading needs a signed-in person (session or Bearer token). An action (every POST) needs
the operator role (viewers: 403 on every one) and, when the request came with the session
cookie, the session's CSRF token, in the form field ``csrf`` or the ``X-CSRF-Token``
header; a Bearer request needs none (a browser never adds that header on its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.requests import Request

from receiver.console.auth import CSRF_FIELD, CSRF_HEADER, AuthFailure, Principal
from receiver.logs import get_logger

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

MAX_FORM_BYTES = 64 * 1024
log = get_logger("receiver.console")


class BodyTooLarge(Exception):
    """A console form or API body over ``MAX_FORM_BYTES``."""


async def read_body(request: Request, limit: int = MAX_FORM_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes while streaming."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the console's forms), bounded."""
    body = await read_body(request)
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site.

    ``Sec-Fetch-Site`` first (browsers send it whatever the referrer policy); else
    ``Origin``, which our ``no-referrer`` policy turns into ``null`` on form posts, so
    ``null`` is no evidence either way. The CSRF token is the check; this is a second one.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return True
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


async def admit(
    console: AdminApp,
    request: Request,
    *,
    action: bool,
    csrf: str | None = None,
    operator: bool = True,
) -> Principal:
    """The person behind ``request``, or AuthFailure: 401/429 unknown, 403 not allowed.

    ``csrf`` is the token the request presented (form field); the header is read here.
    ``operator=False`` is for the one POST every role may make: signing out.
    """
    principal = await console.auth.principal(request)
    if not action:
        return principal
    if operator and not principal.can_act:
        log.warning("admin_forbidden", actor=principal.name, path=request.url.path)
        raise AuthFailure(403, "forbidden")
    presented = csrf if csrf is not None else request.headers.get(CSRF_HEADER)
    if principal.via == "session" and (
        not same_origin(request) or not principal.csrf_ok(presented)
    ):
        log.warning("admin_csrf_refused", actor=principal.name, path=request.url.path)
        raise AuthFailure(403, "csrf_failed")
    return principal


__all__ = ["CSRF_FIELD", "BodyTooLarge", "admit", "read_body", "read_form"]
