"""The handshake's refusals: a wrong key, a full server, a long backlog (``auth`` checks keys)."""

from __future__ import annotations

from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

RETRY_AFTER_S = 5


def forbidden(ws: ServerConnection, reason: str) -> Response:
    return ws.respond(HTTPStatus.FORBIDDEN, f"{reason}\n")


def unauthorized(ws: ServerConnection) -> Response:
    return ws.respond(
        HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Bearer KEY' or ?token=KEY\n"
    )


def busy(ws: ServerConnection, reason: str) -> Response:
    """HTTP 503 with a reason and Retry-After: the handshake's 'try again later'."""
    response = ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{reason}; try again later\n")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
