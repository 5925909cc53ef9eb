"""One session's decisions: sans-I/O.

Audio frames, results and the clock go in; segment jobs to queue and events to send come
out. Nothing here touches a socket or Redis, so every policy of a session is tested by
feeding it bytes and results and reading what it wants done (``tests/test_core.py``):

- the segmenter cuts the audio into segments; each gets a number from the ledger and becomes a
  job for the pool's stream;
- partial results: while a segment is spoken, every ``--partial-ms`` of speech a job for what is
  open so far (never while the speaker pauses, where the segment may be about to end);
- eager endpointing (``services.ingest.core.eager``): a pause under way offers a guess
  (``tentative``); the I/O side checks the pool's backlog and calls ``guess`` or
  ``decline_guess``;
- results are resolved into events strictly in segment order (``services.ingest.core.ledger``); a
  partial only while its segment is still open; a segment dropped after the client saw partials
  of it still gets an (empty) final;
- each final's latency, whole and in parts, goes to the metrics once it is sent (``sent``);
- the session's length limit ends it the way end of audio does, with an error instead of ``done``.

Usage by the I/O side (``services.ingest.pipeline.session``): call ``audio``/``end_of_audio``/
``result``/``expire``, then queue ``jobs_to_queue()``, send ``events_to_send()`` and report each
event sent with ``sent``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from services.audio import resample_pcm16
from services.ingest.config import IngestConfig
from services.ingest.core.eager import Eager
from services.ingest.core.ledger import Ledger
from services.metrics import IngestMetrics
from services.protocol import (
    EagerEnd,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
    WarningEvent,
)
from services.segmenter import Dropped, Event, Segment, Segmenter, Tentative, VadFn

log = logging.getLogger("ingest.session")

# No partial request while the speaker pauses this long: the segment may be about to end, and a
# partial still running then would hold its final back. It resumes with speech.
PARTIAL_PAUSE_S = 0.15
# A channel is warned once its speech peaks below this (dBFS): heard, but less reliably...
QUIET_DB = -40.0
# ...or once more than this share of a segment's samples sit at full scale: clipped on the way in.
CLIPPED_SHARE = 0.001


class SessionCore:
    def __init__(
        self,
        session_id: str,
        model: str,
        rate: int,
        partials: bool,
        config: IngestConfig,
        metrics: IngestMetrics,
        now: float,
        vad: VadFn | None = None,  # WebRTC VAD unless given (tests give a deterministic one)
        channel: int = 0,
        role: str | None = None,
        words: bool = False,
        prompt: str = "",
    ) -> None:
        self.id = session_id
        self.words = words  # finals time their words
        self.prompt = prompt  # the model's vocabulary for this session (``configure`` changes it)
        self.channel = channel
        self.role = role
        self.model = model
        self.rate = rate
        self.partials = partials and config.partial_ms > 0
        self.config = config
        self.metrics = metrics
        self.opened = now
        self.segmenter = Segmenter(rate, config.segmenter, vad)
        self.ledger = Ledger(config.result_timeout)
        self.eager = Eager(config.result_timeout)
        self.eof = False
        self.ending: ProtocolError | None = None  # the error that ends the session instead of done
        self.tentative: Segment | None = None  # a guess on offer: call guess() or decline_guess()
        self._last_partial = 0.0  # stream position of the last partial request
        self._timings: dict[int, dict[str, float]] = {}  # transcriber timings of finals not yet sent
        self._jobs: list[SegmentJob] = []
        self._events: list[ServerEvent] = []
        self._warned: set[str] = set()  # warning codes sent on this channel
        self._speaking = False  # SpeechStarted was sent for the segment now open
        self._guess_span = (0.0, 0.0)  # the audio of the latest guess queued
        self._told_eager: int | None = None  # the segment an EagerEnd was told for, not yet ended

    # --- outputs ---------------------------------------------------------------------------------

    def jobs_to_queue(self) -> list[SegmentJob]:
        """Jobs to add to the pool's streams, in order: ``partial`` ones to its partials stream."""
        jobs, self._jobs = self._jobs, []
        return jobs

    def events_to_send(self) -> list[ServerEvent]:
        """Events for the client, in order."""
        events, self._events = self._events, []
        return events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    @property
    def finished(self) -> bool:
        """End of audio was seen and every segment is answered: ``done`` (or ``ending``) is due."""
        return self.eof and self.ledger.unanswered == 0

    def next_deadline(self) -> float | None:
        """When ``expire`` must next be called: an unanswered segment's deadline."""
        return self.ledger.next_deadline()

    # --- inputs ----------------------------------------------------------------------------------

    def audio(self, pcm: bytes, now: float) -> None:
        """The channel's next 16-bit PCM (``services.ingest.core.channels`` decodes and splits frames)."""
        config = self.config
        for event in self.segmenter.feed(pcm):
            self._segmenter_event(event, now)
        self._started(self.segmenter.speech_start)
        told = self._told_eager is not None  # checked first: the frame path pays nothing otherwise
        if told and self.segmenter.in_speech and self.segmenter.trailing_silence == 0:
            self._resumed()  # a voiced frame: the guess's segment will not end where it guessed
        if self.partials:
            self._request_partial(now)
        if max(self.segmenter.position, now - self.opened) > config.max_session_s:
            # Past the limit: what was said so far is still transcribed and delivered.
            self.ending = ProtocolError(
                "session_too_long",
                f"sessions are limited to {config.max_session_s:g} s; reconnect to go on",
            )
            self.end_of_audio(now)

    def finalize(self, now: float) -> None:
        """The client asked for the open segment to close now; the session goes on."""
        for event in self.segmenter.finalize():
            self._segmenter_event(event, now)

    def end_of_audio(self, now: float) -> None:
        """The client said it is done (or the session reached its length limit)."""
        for event in self.segmenter.flush():
            self._segmenter_event(event, now)
        log.info("session %s end of audio at %.2f s", self.id, self.segmenter.position)
        self.eof = True

    def guess(self, now: float) -> None:
        """Queue the offered guess (the pool has time to spare for it)."""
        segment, self.tentative = self.tentative, None
        assert segment is not None
        number = self.ledger.next_number
        token = self.eager.propose(number, segment, now)
        if token is None:
            return
        pcm = resample_pcm16(segment.pcm, self.rate)
        job = SegmentJob(self.id, number, pcm, segment.start, segment.end, now, now, eager=token)
        self._guess_span = (segment.start, segment.end)
        self._jobs.append(self._mark(job))
        self.metrics.eager_guesses.labels(self.model, "queued").inc()

    def decline_guess(self) -> None:
        """Do not queue the offered guess (the pool's backlog is too long)."""
        self.tentative = None
        self.eager.abandon()

    def result(self, result: SegmentResult, now: float) -> None:
        """A transcriber's result for this session."""
        if result.partial:
            # Only while its segment is still being spoken; a late one is stale.
            fresh = result.segment == self.ledger.next_number and self.segmenter.in_speech
            if fresh and result.text:
                self.ledger.mark_partial(result.segment)
                start = self.segmenter.speech_start or 0.0
                partial = Partial(
                    result.text, result.segment, self.channel, self.role, start, self._last_partial
                )
                self._events.append(partial)
            return
        if result.eager:
            verdict = self.eager.result(result)
            if verdict == "wasted":
                self.metrics.eager_guesses.labels(self.model, "wasted").inc()
            if verdict == "held" and result.outcome == "text" and result.text:
                self._told_eager = result.segment
                eager = EagerEnd(result.text, result.segment, *self._guess_span, self.channel, self.role)
                self._events.append(eager)
            if verdict != "final":
                return  # held until its pause is confirmed, or its guess was abandoned
        self._final(result, now)

    def expire(self, now: float) -> None:
        """Give up on segments whose results are overdue (each gets an error event)."""
        self._emit(self.ledger.expire(now))

    def sent(self, event: ServerEvent, now: float) -> None:
        """``event`` reached the client: a final's latency, whole and in parts; an error's code."""
        if isinstance(event, ErrorEvent):
            self.metrics.errors.labels(event.code).inc()
        if not isinstance(event, Final) or event.silent:
            return
        timings = self._timings.pop(event.segment, {})
        model = self.model
        self.metrics.e2e_latency.labels(model).observe(event.latency)
        if {"enqueued_at", "model_start", "model_end"} <= timings.keys():
            self.metrics.queue_wait.labels(model).observe(timings["model_start"] - timings["enqueued_at"])
            self.metrics.model_time.labels(model).observe(timings["model_end"] - timings["model_start"])
            self.metrics.relay.labels(model).observe(now - timings["model_end"])

    # --- decisions -------------------------------------------------------------------------------

    def _check_level(self, segment: Segment) -> None:
        """Observe the segment's level; warn (once per kind) when it is too quiet or clipped to
        be heard well. The segment is transcribed either way."""
        self.metrics.speech_level.observe(max(segment.peak_db, -120.0))
        if segment.peak_db < QUIET_DB and "quiet_audio" not in self._warned:
            self._warn(
                "quiet_audio",
                f"speech peaks at {segment.peak_db:.0f} dBFS: it is transcribed, but raise the input gain "
                f"(normal speech peaks near -20 to -6 dBFS)",
                segment.peak_db,
            )
        if segment.clipped > CLIPPED_SHARE and "clipped_audio" not in self._warned:
            self._warn(
                "clipped_audio",
                f"{segment.clipped:.1%} of the samples are at full scale: the input is clipped; "
                "lower its gain",
                segment.peak_db,
            )

    def _warn(self, code: str, message: str, level: float) -> None:
        self._warned.add(code)
        self.metrics.warnings.labels(code).inc()
        log.info("session %s channel %d warned: %s (%s)", self.id, self.channel, code, message)
        self._events.append(WarningEvent(code, message, round(level, 1), self.channel, self.role))

    def _resumed(self) -> None:
        """Speech went on after an EagerEnd was told: say its text is not the final."""
        if self._told_eager is not None:
            at = self.segmenter.position
            self._events.append(TurnResumed(self._told_eager, at, self.channel, self.role))
            self._told_eager = None

    def _started(self, at: float | None) -> None:
        """Speech began (``at``, when a segment is open) and the client has not been told yet."""
        if at is not None and not self._speaking:
            self._speaking = True
            self._events.append(SpeechStarted(at, self.channel, self.role))

    def _speech_ended(self, number: int | None, event: Segment | Dropped) -> None:
        ended = SpeechEnded(number, event.start, event.end, event.reason, self.channel, self.role)
        self._events.append(ended)

    def _segmenter_event(self, event: Event, now: float) -> None:
        # A segment may start and close within one feed: its start is told first.
        self._started(event.segment.start if isinstance(event, Tentative) else event.start)
        if isinstance(event, Tentative):
            self._resumed()  # a new pause: the last guess's was not the end
            self.tentative = event.segment
            return
        self.tentative = None  # the pause it offered a guess for has ended, one way or the other
        self._speaking = False
        if isinstance(event, Dropped):
            self._dropped(event, now)
        else:
            self._segment(event, now)

    def _dropped(self, event: Dropped, now: float) -> None:
        self.eager.abandon()
        self._resumed()
        log.debug(
            "session %s dropped %.2f-%.2f s (%s, %.2f s voiced, peak %.1f dBFS)",
            self.id,
            event.start,
            event.end,
            event.reason,
            event.voiced,
            event.peak_db,
        )
        self.metrics.segments_dropped.labels(event.reason).inc()
        number = None
        if self.ledger.had_partial(self.ledger.next_number):
            # The client saw partials of it: the number is used, and its final is empty.
            number = self.ledger.add(event.start, event.end, now, now, event.reason)
        self._events.append(
            SpeechEnded(number, event.start, event.end, event.reason, self.channel, self.role)
        )
        if number is not None:
            self._final(SegmentResult(self.id, number, "empty", reason=event.reason), now)

    def _segment(self, event: Segment, now: float) -> None:
        self.metrics.vad_hangover.labels(self.model).observe(self.segmenter.position - event.speech_end)
        self._check_level(event)
        number = self.ledger.add(event.start, event.end, now, now, event.reason)
        self._events.append(
            SpeechEnded(number, event.start, event.end, event.reason, self.channel, self.role)
        )
        guess = self.eager.close(number, event)
        if guess is None:
            self._resumed()
        self._told_eager = None  # the segment ended: its final is the turn's end
        if guess is None:
            pcm = resample_pcm16(event.pcm, self.rate)
            self._jobs.append(self._mark(SegmentJob(self.id, number, pcm, event.start, event.end, now, now)))
        else:  # the guess's job holds this very audio: its transcript is this segment's final
            self.metrics.eager_guesses.labels(self.model, "confirmed").inc()
            if guess.result is not None:
                self._final(guess.result, now)
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

    def _request_partial(self, now: float) -> None:
        """Every ``partial_ms`` of open speech, ask for a transcript of it so far."""
        start, pcm = self.segmenter.open_pcm()
        position = self.segmenter.position
        if not pcm or position - max(start, self._last_partial) < self.config.partial_ms / 1000:
            return
        if self.segmenter.trailing_silence >= PARTIAL_PAUSE_S:
            return
        self._last_partial = position
        pcm16 = resample_pcm16(pcm, self.rate)
        number = self.ledger.next_number
        self._jobs.append(
            SegmentJob(
                self.id,
                number,
                pcm16,
                start,
                position,
                now,
                now,
                True,
                channel=self.channel,
                prompt=self.prompt,
            )
        )

    def _final(self, result: SegmentResult, now: float) -> None:
        if result.outcome == "text":
            self._timings[result.segment] = result.timings
        self._emit(self.ledger.resolve(result, now))

    def _mark(self, job: SegmentJob) -> SegmentJob:
        """A final's job: its channel, whether to time its words, the session's prompt."""
        return replace(job, channel=self.channel, words=self.words, prompt=self.prompt)

    def _emit(self, events: list[ServerEvent]) -> None:
        """The ledger's events, marked with this channel (and its role)."""
        for event in events:
            if isinstance(event, Final | ErrorEvent):
                event = replace(event, channel=self.channel, role=self.role)
            self._events.append(event)
