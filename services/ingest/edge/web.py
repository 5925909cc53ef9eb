"""The browser microphone page: a few static files and ``GET /models``.

Only the names in ``FILES`` are ever read, so no request path can reach another file.
Every response says ``Cache-Control: no-cache`` so a restarted ingest's page is never
stale.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from pathlib import Path

import redis.asyncio as redis
from aiohttp import web

log = logging.getLogger("ingest.web")

STATIC = Path(__file__).with_name("static")

# Request path -> (file in STATIC, Content-Type). The allow-list: nothing else is served.
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
}

# Same-origin scripts only; the page talks to its own host over HTTP and WebSocket.
CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def response(
    status: HTTPStatus, body: bytes, content_type: str, extra: Iterable[tuple[str, str]] = ()
) -> web.Response:
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", **dict(extra)}
    answer = web.Response(status=status.value, body=body, headers=headers)
    answer.headers["Content-Type"] = content_type
    return answer


def text(status: HTTPStatus, message: str, extra: Iterable[tuple[str, str]] = ()) -> web.Response:
    return response(status, f"{message}\n".encode(), "text/plain; charset=utf-8", extra)


async def respond(
    request: web.Request,
    path: str,
    served_models: Callable[[], Awaitable[list[str]]],
    default_model: str,
) -> web.Response:
    """Answer one plain HTTP request (not a WebSocket upgrade) for ``path``."""
    if path not in FILES and path != "/models":
        return text(HTTPStatus.NOT_FOUND, "not found")
    if request.method != "GET":
        return text(HTTPStatus.METHOD_NOT_ALLOWED, "only GET is allowed", [("Allow", "GET")])
    if path == "/models":
        try:
            models = await served_models()
        except redis.RedisError as error:
            log.error("GET /models: Redis failed: %s", error)
            return text(HTTPStatus.SERVICE_UNAVAILABLE, "the queue is unavailable")
        body = json.dumps({"models": models, "default": default_model}).encode()
        return response(HTTPStatus.OK, body, "application/json")
    name, content_type = FILES[path]
    body = (STATIC / name).read_bytes()  # a few KB, read per request: edits show on reload
    return response(HTTPStatus.OK, body, content_type, [("Content-Security-Policy", CSP)])
