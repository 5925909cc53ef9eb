"""One open WebSocket, as the sessions see it: frames in and out, a close with a code and a
reason, and the request it came from. aiohttp's ``WebSocketResponse`` underneath.

A closed connection raises ``Closed`` (``ClosedOK`` for a normal close, 1000 or 1001) from
``recv`` and ``send``, whoever closed it, as often as it is used. The keepalive is our own: a
ping every ``ping_interval`` seconds whether or not frames arrive, and no pong within
``ping_timeout`` cuts the connection off (1011) — a client that sends audio but never reads is
noticed too (aiohttp's own heartbeat pings only idle connections).

A close is a closing handshake even while another task waits in ``recv``: that wait is
interrupted first (``recv`` raises ``Closed`` there), so aiohttp reads (and drops) the client's
frames until its close frame comes. Otherwise aiohttp closes the socket at once, and a socket
closed with unread data in it is reset by the kernel: what was just sent (an error event, the
close frame) is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMessage, WSMsgType, web

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_KEEPALIVE = 1011


class Closed(Exception):
    """The connection is closed: by the client, by the server, or lost."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


class ClosedOK(Closed):
    """A normal close (1000 or 1001)."""


def closed(code: int | None, reason: str = "") -> Closed:
    code = CLOSE_ABNORMAL if code is None else code
    return (ClosedOK if code in (CLOSE_NORMAL, CLOSE_GOING_AWAY) else Closed)(code, reason)


@dataclass(frozen=True)
class Keepalive:
    ping_interval: float  # 0: no pings
    ping_timeout: float


class Connection:
    """An accepted WebSocket. ``target`` is the request line's target (path and query, as sent),
    ``headers`` the handshake's headers."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, keepalive: Keepalive) -> None:
        self.ws = ws
        self.target = request.raw_path
        self.headers: Mapping[str, str] = request.headers
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.remote_address = tuple(peer[:2]) if peer else None
        self._request = request
        self._closed: Closed | None = None
        self._reader: asyncio.Task[Any] | None = None  # the task waiting in ``recv`` now
        self._no_reader = asyncio.Event()
        self._no_reader.set()
        self._interrupted = False  # ``close`` cancelled the reader's wait
        self._pong = asyncio.Event()
        self._keepalive = asyncio.create_task(self._ping(keepalive)) if keepalive.ping_interval > 0 else None

    def _gone(self) -> Closed:
        if self._closed is None:
            self._closed = closed(self.ws.close_code)
        return self._closed

    async def recv(self) -> str | bytes:
        """The next data frame; raises ``Closed`` once the connection is closed."""
        while self._closed is None:
            message = await self._receive()
            if message is None:
                break
            kind = message.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                data: str | bytes = message.data
                return data
            if kind is WSMsgType.PING:
                with contextlib.suppress(ConnectionResetError):
                    await self.ws.pong(message.data)
            elif kind is WSMsgType.PONG:
                self._pong.set()
            elif kind is WSMsgType.CLOSE:
                self._closed = closed(message.data, message.extra or "")
            else:  # CLOSING, CLOSED, ERROR (a frame over the size limit: 1009)
                self._gone()
        self.stop_keepalive()
        raise self._gone()

    async def _receive(self) -> WSMessage | None:
        """One message from aiohttp; None when ``close`` interrupted the wait for it."""
        reader = asyncio.current_task()
        self._reader = reader
        self._no_reader.clear()
        try:
            return await self.ws.receive()
        except asyncio.CancelledError:
            # Our own cancel (and nobody else's) is not a cancellation of the reading task.
            if self._interrupted and reader is not None and reader.uncancel() == 0:
                return None
            raise
        finally:
            self._reader = None
            self._no_reader.set()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str | bytes]:
        """Frames until a normal close (then the iteration ends); any other close raises."""
        while True:
            try:
                yield await self.recv()
            except ClosedOK:
                return

    async def send(self, frame: str | bytes) -> None:
        if self._closed is not None or self.ws.closed:
            raise self._gone()
        try:
            if isinstance(frame, str):
                await self.ws.send_str(frame)
            else:
                await self.ws.send_bytes(frame)
        except ConnectionResetError:
            raise self._gone() from None

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` (cut to fit a close frame) and wait, bounded, for the
        client's close."""
        self.stop_keepalive()
        if self._closed is None:
            self._closed = closed(code, reason)
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            self._interrupted = True
            reader.cancel()
            await self._no_reader.wait()
        with contextlib.suppress(ConnectionResetError):
            await self.ws.close(code=code, message=reason.encode()[:123])

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    async def _ping(self, keepalive: Keepalive) -> None:
        while True:
            await asyncio.sleep(keepalive.ping_interval)
            self._pong.clear()
            try:
                await self.ws.ping()
                async with asyncio.timeout(keepalive.ping_timeout):
                    await self._pong.wait()
            except ConnectionResetError:
                return
            except TimeoutError:
                # The client reads nothing: no close handshake can work; drop the connection.
                self._closed = Closed(CLOSE_KEEPALIVE, "keepalive ping timeout")
                if self._request.transport is not None:
                    self._request.transport.abort()
                return
