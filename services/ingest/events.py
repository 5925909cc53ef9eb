"""``/calls/<call id>/events``: a telephony call's events, live, on a read-only WebSocket.

An agent desktop connects (same API keys as everything else) and gets the call's events from its
start, or from just after ``?from=<event id>`` (each event carries its ``id``: reconnect with the
last one seen and nothing is missed or repeated). Then it follows the call live, and the server
closes normally (1000) once the call's ``done`` is sent. A call id no stream exists for yet is
waited for up to ``--idle-timeout`` (the desktop may connect before the call starts), then
refused with ``unknown_call``. Anything the desktop sends is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any, NoReturn
from urllib.parse import parse_qs

import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services import keys
from services.ingest.session import ClientGone
from services.ingest.telephony import CALL_ID
from services.protocol import ProtocolError

PATH = re.compile(r"/calls/([^/]+)/events")
EVENT_ID = re.compile(r"\d+-\d+")
BLOCK_MS = 1000
BATCH = 100
Entry = tuple[bytes, dict[bytes, bytes]]


def call_of(path: str) -> str | None:
    """The call id in ``/calls/<call id>/events``, or None for any other path."""
    match = PATH.fullmatch(path)
    return match.group(1) if match else None


def start_after(query: str) -> str:
    """The stream id to read after: ``?from=<event id>``, or the stream's beginning."""
    values = parse_qs(query).get("from")
    if not values:
        return "0-0"
    if not EVENT_ID.fullmatch(values[-1]):
        raise ProtocolError(
            "bad_parameter", f"from={values[-1][:40]!r} is not an event id (like 1700000000000-0)"
        )
    return values[-1]


async def follow(ws: ServerConnection, client: redis.Redis, call: str, after: str, wait_s: float) -> None:
    """Send the call's events after ``after``, then live ones, until its ``done``."""
    if not CALL_ID.fullmatch(call):
        raise ProtocolError("bad_parameter", f"call id {call[:40]!r} is not 1-128 letters, digits or _.:-")
    stream = keys.call_events(call)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    async with asyncio.TaskGroup() as tasks:
        watcher = tasks.create_task(_ignore_incoming(ws))
        while True:
            reply: Any = await client.xread({stream: after}, count=BATCH, block=BLOCK_MS)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [
                entry for _, got in reply or [] for entry in got
            ]
            if not entries and after == "0-0" and loop.time() > deadline and not await client.exists(stream):
                raise ProtocolError("unknown_call", f"no call {call!r} (or its events have expired)")
            for entry_id, fields in entries:
                after = entry_id.decode()
                event = json.loads(fields[b"event"])
                await ws.send(json.dumps({"id": after, **event}, ensure_ascii=False, separators=(",", ":")))
                if event.get("type") == "done":
                    watcher.cancel()
                    await ws.close(1000, "the call is done")
                    return


async def _ignore_incoming(ws: ServerConnection) -> NoReturn:
    """Read (and drop) what the reader sends, so its pings and close are seen; a reader that
    leaves ends the follow."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
    raise ClientGone()
