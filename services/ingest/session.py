"""One client's session: audio in, VAD segments out to Redis, transcripts back.

Two owned tasks per session: ``_receive`` reads frames and enqueues segments,
``_relay`` turns results into events, in segment order, and ends the session
with ``done`` once end of audio was seen and every segment is answered.
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
from services.audio import resample_pcm16
from services.ingest.config import IngestConfig
from services.ingest.eager import Eager
from services.ingest.ledger import Ledger
from services.ingest.results import LOST, WAKE
from services.metrics import IngestMetrics
from services.protocol import (
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    Done,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    SessionParams,
    check_audio_frame,
    parse_text,
)
from services.segmenter import Dropped, Event, Segment, Segmenter, Tentative

log = logging.getLogger("ingest.session")

# Interim requests are cheap to lose: the stream keeps only the newest few hundred.
INTERIM_MAXLEN = 200
INTERIM_PAUSE_S = 0.15


class ClientGone(Exception):
    """The client closed the connection before end of audio."""


class Session:
    def __init__(
        self,
        ws: ServerConnection,
        session_id: str,
        model: str,
        params: SessionParams,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        metrics: IngestMetrics,
    ) -> None:
        self.ws = ws
        self.id = session_id
        self.rate = params.sample_rate
        self.interim = params.interim and config.interim_ms > 0
        self.last_interim = 0.0  # stream position of the last interim request
        self.config = config
        self.redis = client
        self.results = results
        self.stream = keys.segment_stream(model)
        self.interim_stream = keys.interim_stream(model)
        self.segmenter = Segmenter(self.rate, config.segmenter)
        self.ledger = Ledger(config.result_timeout)
        self.eager = Eager(config.result_timeout)
        self.held: list[SegmentResult] = []  # guesses' results to resolve now that they are finals
        self.model = model
        self.metrics = metrics
        self.timings: dict[int, dict[str, float]] = {}  # transcriber timings of results not yet sent
        self.eof = False
        self.ending: ProtocolError | None = None  # the error that ends the session instead of done

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
        config = self.config
        loop = asyncio.get_running_loop()
        opened = time.monotonic()
        while True:
            idle.reschedule(loop.time() + config.idle_timeout)
            try:
                message = await self.ws.recv()
            except ConnectionClosedOK:
                raise ClientGone() from None
            if isinstance(message, str):
                parse_text(message)  # the only client message is end of audio
                idle.reschedule(None)
                await self._end_of_audio()
                await self._watch_after_eof()
            if len(message) > config.max_frame_bytes:
                raise ProtocolError(
                    "frame_too_big",
                    f"frame of {len(message)} bytes; the limit is {config.max_frame_bytes}",
                    CLOSE_TOO_BIG,
                )
            check_audio_frame(message)
            self.metrics.bytes_received.inc(len(message))
            for event in self.segmenter.feed(message):
                await self._enqueue(event)
            if self.interim:
                await self._request_interim()
            if max(self.segmenter.position, time.monotonic() - opened) > config.max_session_s:
                # Past the limit: what was said so far is still transcribed and delivered.
                self.ending = ProtocolError(
                    "session_too_long",
                    f"sessions are limited to {config.max_session_s:g} s; reconnect to go on",
                )
                idle.reschedule(None)
                await self._end_of_audio()
                await self._watch_after_eof()

    async def _end_of_audio(self) -> None:
        for event in self.segmenter.flush():
            await self._enqueue(event)
        log.info("session %s end of audio at %.2f s", self.id, self.segmenter.position)
        self.eof = True
        await self.results.put(WAKE)

    async def _request_interim(self) -> None:
        """Every ``interim_ms`` of open speech, ask for a transcript of it so far."""
        start, pcm = self.segmenter.open_pcm()
        position = self.segmenter.position
        if not pcm or position - max(start, self.last_interim) < self.config.interim_ms / 1000:
            return
        if self.segmenter.trailing_silence >= INTERIM_PAUSE_S:
            # The speaker paused: the segment may be about to end, and an interim still
            # running then would hold its final back. Wait for speech to resume.
            return
        self.last_interim = position
        now = time.time()
        job = SegmentJob(
            self.id,
            self.ledger.next_number,
            resample_pcm16(pcm, self.rate),
            start,
            position,
            now,
            now,
            partial=True,
        )
        fields: dict[Any, Any] = job.to_fields()
        await self.redis.xadd(self.interim_stream, fields, maxlen=INTERIM_MAXLEN, approximate=True)

    async def _enqueue(self, event: Event) -> None:
        if isinstance(event, Tentative):
            await self._guess(event.segment)
            return
        if isinstance(event, Dropped):
            self.eager.abandon()
            log.debug("session %s dropped %.2f-%.2f s (%s)", self.id, event.start, event.end, event.reason)
            self.metrics.segments_dropped.labels(event.reason).inc()
            if self.ledger.had_partial(self.ledger.next_number):
                # The client saw partials of it: the number is used, and its final is empty.
                number = self.ledger.add(event.start, event.end, time.time(), time.time())
                await self.results.put(
                    SegmentResult(self.id, number, "empty", reason=event.reason).to_json().encode()
                )
            return
        self.metrics.vad_hangover.labels(self.model).observe(self.segmenter.position - event.speech_end)
        endpoint_at = time.time()
        number = self.ledger.add(event.start, event.end, endpoint_at, endpoint_at)
        guess = self.eager.close(number, event)
        if guess is None:
            pcm = resample_pcm16(event.pcm, self.rate)
            job = SegmentJob(self.id, number, pcm, event.start, event.end, endpoint_at, time.time())
            fields: dict[Any, Any] = job.to_fields()
            await self.redis.xadd(self.stream, fields, maxlen=self.config.stream_maxlen, approximate=True)
        else:  # the guess's job holds this very audio: its transcript is this segment's final
            self.metrics.eager_guesses.labels(self.model, "confirmed").inc()
            if guess.result is not None:
                self.held.append(guess.result)
                await self.results.put(WAKE)
        self.metrics.segments_enqueued.labels(self.model).inc()
        log.info(
            "session %s segment %d queued: %.2f-%.2f s (%s%s)",
            self.id,
            number,
            event.start,
            event.end,
            event.reason,
            "" if guess is None else f", as eager guess {guess.token}",
        )

    async def _guess(self, segment: Segment) -> None:
        """Queue what a pause under way would close, if the pool has time to spare for it."""
        config = self.config
        if await self.redis.xlen(self.stream) > config.eager_max_backlog:
            self.eager.abandon()
            return
        now = time.time()
        number = self.ledger.next_number
        token = self.eager.propose(number, segment, now)
        if token is None:
            return
        pcm = resample_pcm16(segment.pcm, self.rate)
        job = SegmentJob(self.id, number, pcm, segment.start, segment.end, now, now, eager=token)
        fields: dict[Any, Any] = job.to_fields()
        await self.redis.xadd(self.stream, fields, maxlen=config.stream_maxlen, approximate=True)
        self.metrics.eager_guesses.labels(self.model, "queued").inc()

    async def _relay(self) -> None:
        while not (self.eof and self.ledger.unanswered == 0):
            deadline = self.ledger.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                raw = await asyncio.wait_for(self.results.get(), timeout)
            except TimeoutError:
                events = self.ledger.expire(time.time())
            else:
                if raw == LOST:
                    raise ProtocolError(
                        "backend_unavailable", "lost the connection to the queue; reconnect", CLOSE_TRY_AGAIN
                    )
                events = self._resolve_held() if raw == WAKE else self._resolve(raw)
            for event in events:
                await self._send(event)
        if self.ending is not None:
            raise self.ending
        await self._send(Done())
        log.info("session %s done", self.id)

    async def _send(self, event: ServerEvent) -> None:
        """Send one event; a client that does not read for ``send_timeout`` is cut off."""
        try:
            await asyncio.wait_for(self.ws.send(event.to_json()), self.config.send_timeout)
        except TimeoutError:
            raise ProtocolError("slow_client", "the client does not read its results") from None
        if isinstance(event, Final):
            self._observe(event, time.time())
        elif isinstance(event, ErrorEvent):
            self.metrics.errors.labels(event.code).inc()

    def _observe(self, final: Final, sent_at: float) -> None:
        """The latency of one delivered transcript, whole and in parts."""
        timings = self.timings.pop(final.segment, {})
        model = self.model
        self.metrics.e2e_latency.labels(model).observe(final.latency)
        if {"enqueued_at", "model_start", "model_end"} <= timings.keys():
            self.metrics.queue_wait.labels(model).observe(timings["model_start"] - timings["enqueued_at"])
            self.metrics.model_time.labels(model).observe(timings["model_end"] - timings["model_start"])
            self.metrics.relay.labels(model).observe(sent_at - timings["model_end"])

    def _resolve(self, raw: bytes) -> list[ServerEvent]:
        try:
            result = SegmentResult.from_json(raw)
        except ValueError as exc:
            log.error("session %s: %s", self.id, exc)
            return []
        if result.session != self.id:
            log.error("session %s got a result for session %s; dropped", self.id, result.session)
            return []
        if result.partial:
            # Only while its segment is still being spoken; a late one is stale.
            fresh = result.segment == self.ledger.next_number and self.segmenter.in_speech
            if not (fresh and result.text):
                return []
            self.ledger.mark_partial(result.segment)
            return [Partial(result.text, result.segment)]
        if result.eager:
            verdict = self.eager.result(result)
            if verdict == "wasted":
                self.metrics.eager_guesses.labels(self.model, "wasted").inc()
            if verdict != "final":
                return []  # held until its pause is confirmed, or its guess was abandoned
        return self._final(result)

    def _resolve_held(self) -> list[ServerEvent]:
        events = [event for result in self.held for event in self._final(result)]
        self.held.clear()
        return events

    def _final(self, result: SegmentResult) -> list[ServerEvent]:
        if result.outcome == "text":
            self.timings[result.segment] = result.timings
        return self.ledger.resolve(result, time.time())
