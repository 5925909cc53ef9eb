"""Who may open a session: API keys, capacity and backlog, checked at the HTTP handshake."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

RETRY_AFTER_S = 5


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``?token=KEY``, if any."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    tokens = parse_qs(urlsplit(request.path).query).get("token")
    return tokens[-1] if tokens else None


def authorized(request: Request, keys: Iterable[str]) -> bool:
    key = presented_key(request)
    if not key:
        return False
    # Compare against every key in constant time, so timing tells nothing.
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in keys])


def unauthorized(ws: ServerConnection) -> Response:
    return ws.respond(
        HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Bearer KEY' or ?token=KEY\n"
    )


def busy(ws: ServerConnection, reason: str) -> Response:
    """HTTP 503 with a reason and Retry-After: the handshake's 'try again later'."""
    response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{reason}; try again later\n")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
