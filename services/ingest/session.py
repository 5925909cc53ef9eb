"""One client's session: the I/O around its sans-I/O core (``services.ingest.core``).

Two owned tasks per session: ``_receive`` reads frames into the core and queues the jobs it
makes on Redis; ``_relay`` feeds results to the core and sends its events, and ends the session
with ``done`` once the core has answered every segment after end of audio. Only ``_relay``
sends, so events go out in the order the core made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, NoReturn

import redis.asyncio as redis
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedOK

from services import keys
from services.ingest.config import IngestConfig
from services.ingest.core import SessionCore
from services.ingest.results import LOST, WAKE
from services.protocol import (
    CLOSE_TRY_AGAIN,
    Done,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    parse_text,
)

log = logging.getLogger("ingest.session")

# Partial requests are cheap to lose: the stream keeps only the newest few hundred.
PARTIALS_MAXLEN = 200


class ClientGone(Exception):
    """The client closed the connection before end of audio."""


class Session:
    def __init__(
        self,
        ws: ServerConnection,
        core: SessionCore,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
    ) -> None:
        self.ws = ws
        self.core = core
        self.id = core.id
        self.config = config
        self.redis = client
        self.results = results
        self.stream = keys.segment_stream(core.model)
        self.partials_stream = keys.partials_stream(core.model)

    async def run(self) -> None:
        """Until ``done`` is sent; raises ClientGone or ProtocolError if the session ends early."""
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(self._receive())
            await self._relay()
            receiver.cancel()

    async def _watch_after_eof(self) -> NoReturn:
        """After end of audio, notice a client that leaves before its results arrive, so
        they are not waited for (and not transcribed: the channel is unsubscribed)."""
        with contextlib.suppress(ConnectionClosedOK):
            async for _ in self.ws:
                pass  # nothing is expected after end of audio
        raise ClientGone()

    async def _receive(self) -> None:
        idle_timeout = self.config.idle_timeout
        try:
            # One timer rescheduled per frame: asyncio.wait_for would cost a task per frame.
            async with asyncio.timeout(None) as idle:
                await self._receive_audio(idle)
        except TimeoutError:
            if not idle.expired():
                raise
            raise ProtocolError("idle_timeout", f"no data for {idle_timeout:g} s") from None

    async def _receive_audio(self, idle: asyncio.Timeout) -> NoReturn:
        core = self.core
        loop = asyncio.get_running_loop()
        while True:
            idle.reschedule(loop.time() + self.config.idle_timeout)
            try:
                message = await self.ws.recv()
            except ConnectionClosedOK:
                raise ClientGone() from None
            if isinstance(message, str):
                parse_text(message)  # the only client message is end of audio
                core.end_of_audio(time.time())
            else:
                core.audio(message, time.time())
                if core.tentative is not None:
                    if await self.redis.xlen(self.stream) > self.config.eager_max_backlog:
                        core.decline_guess()
                    else:
                        core.guess(time.time())
            await self._queue(core.jobs_to_queue())
            if core.eof or core.has_events:
                await self.results.put(WAKE)  # the relay sends what the core made here
            if core.eof:
                idle.reschedule(None)
                await self._watch_after_eof()

    async def _queue(self, jobs: list[SegmentJob]) -> None:
        for job in jobs:
            fields: dict[Any, Any] = job.to_fields()
            if job.partial:
                await self.redis.xadd(self.partials_stream, fields, maxlen=PARTIALS_MAXLEN, approximate=True)
            else:
                await self.redis.xadd(self.stream, fields, maxlen=self.config.stream_maxlen, approximate=True)

    async def _relay(self) -> None:
        core = self.core
        while True:
            events = core.events_to_send()
            for event in events:
                await self._send(event)
            if events:
                continue  # the core may have made more while they were sent
            if core.finished:
                break
            deadline = core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                raw = await asyncio.wait_for(self.results.get(), timeout)
            except TimeoutError:
                core.expire(time.time())
            else:
                if raw == LOST:
                    raise ProtocolError(
                        "backend_unavailable", "lost the connection to the queue; reconnect", CLOSE_TRY_AGAIN
                    )
                if raw != WAKE:
                    self._result(raw)
        if core.ending is not None:
            raise core.ending
        await self._send(Done())
        log.info("session %s done", self.id)

    def _result(self, raw: bytes) -> None:
        try:
            result = SegmentResult.from_json(raw)
        except ValueError as exc:
            log.error("session %s: %s", self.id, exc)
            return
        if result.session != self.id:
            log.error("session %s got a result for session %s; dropped", self.id, result.session)
            return
        self.core.result(result, time.time())

    async def _send(self, event: ServerEvent) -> None:
        """Send one event; a client that does not read for ``send_timeout`` is cut off."""
        try:
            await asyncio.wait_for(self.ws.send(event.to_json()), self.config.send_timeout)
        except TimeoutError:
            raise ProtocolError("slow_client", "the client does not read its results") from None
        self.core.sent(event, time.time())
