"""``/calls/<call id>/events``: a telephony call's events, live, on a read-only WebSocket.

An agent desktop connects (same API keys as everything else) and gets the call's events from its
start, or from just after ``?from=<event id>`` (each event carries its ``id``: reconnect with the
last one seen and nothing is missed or repeated). Then it follows the call live, and the server
closes normally (1000) once every media stream of the call that started has sent its ``done``
(one call can carry several streams; each event names its ``stream``). A call whose ingest
died before ``done`` ends the reader with ``call_lost`` once no stream of it is live. A call
id no stream exists for yet is waited for up to ``--idle-timeout`` (the desktop may connect
before the call starts), then refused with ``unknown_call``. Anything the desktop sends is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any, NoReturn
from urllib.parse import parse_qs

import redis.asyncio as redis

from services import keys
from services.ingest.edge.connection import Closed, Connection
from services.ingest.pipeline.session import ClientGone
from services.ingest.protocols.telephony.frames import CALL_ID
from services.protocol import CLOSE_INTERNAL, ErrorEvent, ProtocolError

PATH = re.compile(r"/calls/([^/]+)/events")
EVENT_ID = re.compile(r"\d+-\d+")
BLOCK_MS = 1000
BATCH = 100
# A reader waits this long after the call's last event once no stream of it is live (a stream
# marks itself live every few seconds: services.ingest.session.CALL_LIVE_TTL_MS).
LIVE_GRACE_S = 12.0
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


async def follow(ws: Connection, client: redis.Redis, call: str, after: str, wait_s: float) -> None:
    """Send the call's events after ``after``, then live ones, until every stream of the call that
    started has its ``done``. Every wait is bounded: a call not started within ``wait_s`` is
    ``unknown_call``; once no stream of the call is live (``keys.call_live``) and no event came for
    LIVE_GRACE_S, the reader is closed: normally when nothing it saw is unfinished, else with
    ``call_lost`` (the stream's ingest died before its ``done``)."""
    if not CALL_ID.fullmatch(call):
        raise ProtocolError("bad_parameter", f"call id {call[:40]!r} is not 1-128 letters, digits or _.:-")
    stream = keys.call_events(call)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    quiet_since = loop.time()
    unfinished = await _unfinished_before(client, stream, after)  # streams started and not done
    async with asyncio.TaskGroup() as tasks:
        watcher = tasks.create_task(_ignore_incoming(ws))
        while True:
            reply: Any = await client.xread({stream: after}, count=BATCH, block=BLOCK_MS)
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [
                entry for _, got in reply or [] for entry in got
            ]
            now = loop.time()
            if entries or await client.exists(keys.call_live(call)):
                quiet_since = now
            elif after == "0-0" and not await client.exists(stream):
                if now > deadline:
                    raise ProtocolError("unknown_call", f"no call {call!r} (or its events have expired)")
            elif now - quiet_since > LIVE_GRACE_S:
                watcher.cancel()
                await _end_without_done(ws, unfinished)
                return
            for entry_id, fields in entries:
                after = entry_id.decode()
                event = json.loads(fields[b"event"])
                await ws.send(json.dumps({"id": after, **event}, ensure_ascii=False, separators=(",", ":")))
                if _track(unfinished, event):
                    watcher.cancel()
                    await ws.close(1000, "the call is done")
                    return


def _track(unfinished: set[str], event: dict[str, Any]) -> bool:
    """Note which streams of the call are unfinished after ``event``; True once a ``done`` left none."""
    if event.get("type") == "start":
        unfinished.add(str(event.get("stream")))
    elif event.get("type") == "done":
        unfinished.discard(str(event.get("stream")))
        return not unfinished
    return False


async def _unfinished_before(client: redis.Redis, stream: str, after: str) -> set[str]:
    """The call's streams started and not done up to ``after`` (a reader resuming with ``?from=``
    has not seen their start): one pass over the (bounded) event stream."""
    unfinished: set[str] = set()
    start = "-"
    while after != "0-0":
        page: Any = await client.xrange(stream, start, after, count=BATCH)
        for entry_id, fields in page:
            _track(unfinished, json.loads(fields[b"event"]))
            start = "(" + entry_id.decode()
        if len(page) < BATCH:
            break
    return unfinished


async def _end_without_done(ws: Connection, unfinished: set[str]) -> None:
    """No stream of the call is live any more and nothing comes: the reader is told how it ended."""
    if not unfinished:
        await ws.close(1000, "no stream of the call is live")
        return
    lost = ", ".join(sorted(unfinished))
    message = f"stream(s) {lost} of the call ended without done: their ingest stopped"
    await ws.send(ErrorEvent("call_lost", message).to_json())
    await ws.close(CLOSE_INTERNAL, "the call's stream was lost")


async def _ignore_incoming(ws: Connection) -> NoReturn:
    """Read (and drop) what the reader sends, so its pings and close are seen; a reader that
    leaves ends the follow."""
    with contextlib.suppress(Closed):
        async for _ in ws:
            pass
    raise ClientGone()
