"""Who may open a session: API keys, capacity and backlog, checked at the HTTP handshake."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

RETRY_AFTER_S = 5


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY``, ``?token=KEY`` or HTTP Basic auth (its password:
    Exotel streams to ``wss://user:KEY@host/exotel``), if any."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or user
    tokens = parse_qs(urlsplit(request.path).query).get("token")
    return tokens[-1] if tokens else None


def key_valid(key: str | None, keys: Iterable[str]) -> bool:
    """The one check of an API key, however it came (a header, the query, Basic auth, a telephony
    platform's custom parameter ``token``)."""
    if not key:
        return False
    # Compare against every key in constant time, so timing tells nothing.
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in keys])


def twilio_signed(request: Request, auth_token: str) -> bool:
    """Twilio's ``X-Twilio-Signature``: base64 HMAC-SHA1, keyed by the account's auth token, of the
    URL it connected to (a WebSocket request has no form parameters to append). Behind a proxy
    this service cannot know whether that URL began wss:// or ws://, so either is accepted."""
    signature = request.headers.get("X-Twilio-Signature", "")
    host = request.headers.get("Host", "")
    if not signature or not host:
        return False
    valid = []
    for scheme in ("wss", "ws"):
        digest = hmac.new(
            auth_token.encode(), f"{scheme}://{host}{request.path}".encode(), hashlib.sha1
        ).digest()
        valid.append(hmac.compare_digest(base64.b64encode(digest).decode(), signature))
    return any(valid)


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
