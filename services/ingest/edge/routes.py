"""The path table: which protocol a WebSocket's path speaks.

Every path the ingest serves over WebSocket is here and nowhere else. A client session's route
opens its protocol from the query string (the session's parameters and the protocol's adapter);
a telephony route names its platform; a call's event stream is ``/calls/{call}/events``. Any
other path speaks our own protocol (Oriserve's clients connect to ``/``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

from aiohttp import web

from services.ingest.outputs import events
from services.ingest.protocols import deepgram, flux, openai_realtime
from services.ingest.protocols.adapter import Adapter
from services.ingest.protocols.native import Native
from services.ingest.protocols.telephony import frames
from services.protocol import ProtocolError, SessionParams, parse_query

Opener = Callable[[str], tuple[SessionParams, Adapter]]
# How a protocol refuses a bad query at the handshake, as its own servers do (an HTTP error);
# None: the session opens and says so in the protocol's error message.
HandshakeRefusal = Callable[[ProtocolError], web.Response]


@dataclass(frozen=True)
class ClientRoute:
    """A client speaking a wire protocol: ``open`` parses the query (raising ProtocolError)."""

    protocol: str
    open: Opener
    refuse_at_handshake: HandshakeRefusal | None = None


@dataclass(frozen=True)
class CallRoute:
    """A telephony platform's media stream."""

    platform: frames.Platform


@dataclass(frozen=True)
class EventsRoute:
    """A reader of one call's event stream."""

    call: str


Route = ClientRoute | CallRoute | EventsRoute


def _native(query: str) -> tuple[SessionParams, Adapter]:
    params = parse_query(query)
    return params, Native(params.turns)


def _deepgram(query: str) -> tuple[SessionParams, Adapter]:
    params, options = deepgram.parse(query)
    return params, deepgram.Deepgram(options, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")


def _deepgram_refusal(error: ProtocolError) -> web.Response:
    """Deepgram's refusal of a query: HTTP 400, the reason in its ``dg-error`` header and body."""
    request_id = str(uuid.uuid4())
    body = {"err_code": "Bad Request", "err_msg": error.message, "request_id": request_id}
    headers = {"dg-error": error.message.encode("ascii", "replace").decode(), "dg-request-id": request_id}
    return web.json_response(body, status=HTTPStatus.BAD_REQUEST, headers=headers)


NATIVE = ClientRoute("native", _native)
CLIENTS: dict[str, ClientRoute] = {
    "/v1/listen": ClientRoute("deepgram", _deepgram, _deepgram_refusal),
    "/v2/listen": ClientRoute("flux", flux.parse, _deepgram_refusal),
    "/v1/realtime": ClientRoute("openai-realtime", openai_realtime.parse),
}
CALLS: dict[str, CallRoute] = {f"/{platform}": CallRoute(platform) for platform in frames.PLATFORMS}


def find(path: str) -> Route:
    """The route of a request's path (without its query)."""
    if path in CALLS:
        return CALLS[path]
    call = events.call_of(path)
    if call is not None:
        return EventsRoute(call)
    return CLIENTS.get(path, NATIVE)
