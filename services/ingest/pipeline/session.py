"""One client's session: the I/O around its sans-I/O core (``services.ingest.core.channels``, a
``services.ingest.core.channel`` per audio channel).

Two owned tasks per session: ``_receive`` reads frames into the core and queues the jobs it
makes on Redis; ``_relay`` feeds results to the core and sends its events, and ends the session
with ``done`` once the core has answered every segment after end of audio. Only ``_relay``
sends, so events go out in the order the core made them.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, NoReturn

import redis.asyncio as redis

from services import keys
from services.ingest.config import IngestConfig
from services.ingest.core.channels import Channels
from services.ingest.edge.connection import Closed, ClosedOK, Connection
from services.ingest.outputs.webhook import Webhook
from services.ingest.pipeline.backlog import waiting
from services.ingest.pipeline.results import LOST, WAKE
from services.ingest.pipeline.talking import Talking
from services.ingest.protocols import native
from services.ingest.protocols.adapter import Adapter, Reply
from services.ingest.protocols.telephony import frames as telephony
from services.ingest.protocols.telephony.call import Call, record
from services.lifecycle import honour_cancellation
from services.protocol import (
    CLOSE_TRY_AGAIN,
    Done,
    ErrorEvent,
    Final,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    check_frame_size,
)

log = logging.getLogger("ingest.session")

# Partial requests are cheap to lose: the stream keeps only the newest few hundred.
PARTIALS_MAXLEN = 200
# A call's streams mark it live (keys.call_live) this often, for this long.
CALL_LIVE_EVERY_S = 2.0
CALL_LIVE_TTL_MS = 10_000
POOL_POLL_S = 1.0  # how often a session of a pool at zero looks for its first transcriber
IDLE_SLACK_S = 0.25  # how stale the idle deadline may get before it is moved (below)


class ClientGone(Exception):
    """The client closed the connection before end of audio."""


class Runner(abc.ABC):
    """A session's two tasks: where its audio comes from (``_receive``) and where an event goes
    (``_send``) is its kind's: a socket (``SocketRunner``) or an uploaded file
    (``services.ingest.pipeline.files``)."""

    def __init__(
        self,
        core: Channels,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        cold: bool = False,
    ) -> None:
        self.core = core
        self.cold = cold  # its pool had no live transcriber yet (a --pools pool at zero)
        self.id = core.id
        self.config = config
        self.redis = client
        self.results = results
        self.stream = keys.segment_stream(core.model)
        self.partials_stream = keys.partials_stream(core.model)

    async def run(self) -> None:
        """Until ``done`` is sent; raises ClientGone or ProtocolError if the session ends early."""
        async with asyncio.TaskGroup() as tasks:
            beside = [tasks.create_task(task) for task in (self._receive(), *self._beside())]
            await self._relay()
            for task in beside:
                task.cancel()

    def _beside(self) -> list[Coroutine[Any, Any, None]]:
        """Tasks that run beside the receiver while the session lives."""
        return [self._await_pool()] if self.cold else []

    async def _await_pool(self) -> None:
        """A pool at zero transcribers: its segments wait in its stream (which an autoscaler reads)
        until one comes up, for ``--pool-start-timeout`` at most; then the session ends clearly."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.pool_start_timeout
        while not await self.redis.exists(keys.alive_key(self.core.model)):
            honour_cancellation()
            if loop.time() > deadline:
                raise ProtocolError(
                    "no_transcriber",
                    f"no transcriber of pool {self.core.model!r} came up within "
                    f"{self.config.pool_start_timeout:g} s; try again later",
                    CLOSE_TRY_AGAIN,
                )
            await asyncio.sleep(POOL_POLL_S)
        log.info("session %s: pool %s is up", self.id, self.core.model)

    @abc.abstractmethod
    async def _receive(self) -> None:
        """Feed the session's audio into the core and queue the jobs it makes."""

    async def _offer_guesses(self) -> None:
        """Queue each channel's eager guess, if the pool has time to spare for it."""
        for channel in self.core.cores:
            if channel.tentative is None:
                continue
            backlog = await waiting(self.redis, self.stream)
            honour_cancellation()
            if backlog > self.config.eager_max_backlog:
                channel.decline_guess()
            else:
                channel.guess(time.time())

    async def _queue(self, jobs: list[SegmentJob]) -> None:
        for job in jobs:
            fields: dict[Any, Any] = job.to_fields()
            if job.partial:
                await self.redis.xadd(self.partials_stream, fields, maxlen=PARTIALS_MAXLEN, approximate=True)
            else:
                await self.redis.xadd(self.stream, fields, maxlen=self.config.stream_maxlen, approximate=True)
                if self.config.durable_ms > 0:
                    await self._replicate()
            honour_cancellation()

    async def _replicate(self) -> None:
        """``--durable-ms``: wait for a replica to have what was just queued (a failover loses only
        what no replica had). A replica that does not answer in time is counted, not waited for."""
        replicas = await self.redis.wait(1, self.config.durable_ms)
        if replicas < 1:
            self.core.metrics.unreplicated.inc()

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

    @abc.abstractmethod
    async def _send(self, event: ServerEvent) -> None:
        """Deliver one of the core's events; then report it with ``core.sent``."""


class SocketRunner(Runner):
    """A session whose audio comes over a WebSocket: what a frame means (``_take``) is its
    kind's, a client's protocol (``Session``) or a telephony call (``CallSession``)."""

    def __init__(
        self,
        ws: Connection,
        core: Channels,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        cold: bool = False,
        talking: Talking | None = None,
    ) -> None:
        super().__init__(core, config, client, results, cold)
        self.ws = ws
        self.talking = talking  # told while a segment is open (file work then waits)
        self.idle_timeout = config.idle_timeout  # no frame for this long ends the session
        self.replies: list[str | bytes] = []  # frames that answer the client's last one, sent at once

    async def _after_eof(self) -> NoReturn:
        """After end of audio, notice a client that leaves before its results arrive, so
        they are not waited for (and not transcribed: the channel is unsubscribed)."""
        with contextlib.suppress(ClosedOK):
            async for _ in self.ws:
                pass  # nothing is expected after end of audio
        raise ClientGone()

    async def _receive(self) -> None:
        idle_timeout = self.idle_timeout
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
            # Moved only when it is IDLE_SLACK_S stale: a reschedule per 20 ms frame was a tenth
            # of the ingest's loop (py-spy); the session ends idle_timeout to +IDLE_SLACK_S late.
            now = loop.time()
            if (idle.when() or 0.0) < now + self.idle_timeout:
                idle.reschedule(now + self.idle_timeout + IDLE_SLACK_S)
            try:
                message = await self.ws.recv()
            except Closed as closed:
                self._closed(closed)
            else:
                self._take(message, time.time())
                if self.talking is not None and core.speaking:
                    await self.talking.heard(core.model)
            while self.replies:
                await self._deliver(self.replies.pop(0))
            await self._offer_guesses()
            await self._queue(core.jobs_to_queue())
            if core.eof or core.has_events:
                await self.results.put(WAKE)  # the relay sends what the core made here
            if core.eof:
                idle.reschedule(None)
                await self._after_eof()

    @abc.abstractmethod
    def _take(self, message: str | bytes, now: float) -> None:
        """One frame from the socket, into the core."""

    def _closed(self, closed: Closed) -> None:
        """The client closed the connection before end of audio: its results are not wanted."""
        if isinstance(closed, ClosedOK):
            raise ClientGone()
        raise closed

    async def _deliver(self, frame: str | bytes) -> None:
        """Send one frame; a client that does not read for ``send_timeout`` is cut off."""
        try:
            await asyncio.wait_for(self.ws.send(frame), self.config.send_timeout)
        except TimeoutError:
            raise ProtocolError("slow_client", "the client does not read its results") from None


class Session(SocketRunner):
    """A client speaking one of the wire protocols (``services.ingest.protocols``): its frames go
    through the protocol's adapter into the core, and the core's events back out through it."""

    def __init__(
        self,
        ws: Connection,
        core: Channels,
        adapter: Adapter,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        cold: bool = False,
        talking: Talking | None = None,
    ) -> None:
        super().__init__(ws, core, config, client, results, cold, talking)
        self.adapter = adapter
        self.idle_timeout = adapter.idle_timeout() or config.idle_timeout

    def _take(self, message: str | bytes, now: float) -> None:
        """One frame of the client's protocol, through its adapter, into the core; the
        protocol's immediate replies to it wait in ``replies`` for the receiver to send."""
        for taken in self.adapter.take(message):
            if isinstance(taken, Reply):
                self.replies.append(taken.frame)
            else:
                self.core.apply(taken, now)

    async def _send(self, event: ServerEvent) -> None:
        """Send one event in the client's protocol."""
        for frame in self.adapter.render(event):
            await self._deliver(frame)
        self.core.sent(event, time.time())


class CallSession(SocketRunner):
    """A telephony call: the platform's JSON frames in (``protocols.telephony.call``, the call
    core), the call's events out to its event stream in Redis (``keys.call_events``), never to
    the platform.

    A call is not a client that may leave: when the platform closes the socket (a hang-up, or
    Plivo's end of every stream) what was said is still transcribed and recorded, then ``done``.
    """

    def __init__(
        self,
        ws: Connection,
        call: Call,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        cold: bool = False,
        webhook: Webhook | None = None,
        talking: Talking | None = None,
    ) -> None:
        super().__init__(ws, call.channels, config, client, results, cold, talking)
        self.call = call
        self.webhook = webhook
        self.events = keys.call_events(call.start.call)

    def _beside(self) -> list[Coroutine[Any, Any, None]]:
        return [*super()._beside(), self._live()]

    async def run(self) -> None:
        try:
            await super().run()
        except* ProtocolError as group:  # the call's stream says why its transcription ended
            error = group.exceptions[0]
            assert isinstance(error, ProtocolError)
            with contextlib.suppress(redis.RedisError):
                await self.record(ErrorEvent(error.code, error.message))
                await self.record(Done())
            raise
        finally:
            with contextlib.suppress(redis.RedisError):
                await self.redis.hdel(keys.call_live(self.call.start.call), self.call.start.stream)

    async def _live(self) -> None:
        """Keep the call's live hash naming this stream while it is served (readers of the call's
        events end once no stream of it is live and no event comes)."""
        live, stream = keys.call_live(self.call.start.call), self.call.start.stream
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(live, stream, self.id)
                pipe.pexpire(live, CALL_LIVE_TTL_MS)
                await pipe.execute()
            honour_cancellation()
            await asyncio.sleep(CALL_LIVE_EVERY_S)

    def _take(self, message: str | bytes, now: float) -> None:
        check_frame_size(len(message), self.config.max_frame_bytes)
        self.call.message(telephony.parse(self.call.start.platform, message), now)

    def _closed(self, closed: Closed) -> None:
        self.call.hang_up(time.time(), "hangup")

    async def _after_eof(self) -> NoReturn:
        # Whether the platform keeps the socket open after stop or closes it, the relay goes on
        # until every transcript is recorded, then ends the session (and this task).
        with contextlib.suppress(Closed):
            async for _ in self.ws:
                pass
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _send(self, event: ServerEvent) -> None:
        if native.shown(event):  # a call's stream keeps our protocol's events
            await self.record(event)
        self.core.sent(event, time.time())

    async def record(self, event: ServerEvent) -> None:
        """Append ``event`` to the call's event stream, bounded, and keep the stream alive for its TTL."""
        calls, kept = self.config.calls, record(event, self.call.start.stream)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.events, {"event": kept}, maxlen=calls.events_maxlen, approximate=True)
            pipe.expire(self.events, round(calls.events_ttl))
            await pipe.execute()
        honour_cancellation()
        if self.webhook is not None and isinstance(event, Final):
            self.webhook.submit(self.call.start.call, kept)
