"""The handshake's refusals: a wrong key, a full server, a long backlog (``auth`` checks keys)."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from services.ingest.edge.web import text

RETRY_AFTER_S = 5


def forbidden(reason: str) -> web.Response:
    return text(HTTPStatus.FORBIDDEN, reason)


def unauthorized() -> web.Response:
    return text(
        HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Bearer KEY' or ?token=KEY"
    )


def busy(reason: str) -> web.Response:
    """HTTP 503 with a reason and Retry-After: the handshake's 'try again later'."""
    return text(
        HTTPStatus.SERVICE_UNAVAILABLE, f"{reason}; try again later", [("Retry-After", str(RETRY_AFTER_S))]
    )
