"""One session's audio as it arrives: sans-I/O.

Frames in the session's encoding (16-bit PCM, or G.711 mu-law / A-law) and channel layout
(mono, or interleaved stereo) are checked, decoded and split; each channel has its own
``SessionCore`` (VAD, segments, results, events), so two talkers on two channels never cut
each other's segments. Jobs and events carry their channel (and its role, when the client named
them); the session is finished when every channel is.
"""

from __future__ import annotations

from services.audio import decode_pcm16, split_channels
from services.ingest.config import IngestConfig
from services.ingest.core.channel import SessionCore
from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, Input
from services.metrics import IngestMetrics
from services.protocol import (
    CLOSE_UNSUPPORTED_DATA,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    SessionParams,
    check_frame_size,
)
from services.segmenter import VadFn


class Channels:
    def __init__(
        self,
        session_id: str,
        model: str,
        params: SessionParams,
        config: IngestConfig,
        metrics: IngestMetrics,
        now: float,
        vad: VadFn | None = None,
    ) -> None:
        self.id = session_id
        self.model = model
        self.params = params
        self.config = config
        self.metrics = metrics
        self.cores = [
            SessionCore(
                session_id,
                model,
                params.sample_rate,
                params.partials,
                config,
                metrics,
                now,
                vad,
                channel=channel,
                role=params.roles[channel] if params.roles else None,
                words=params.words,
                prompt=params.prompt,
            )
            for channel in range(params.channels)
        ]
        # Bytes of one sample of every channel: a frame holds whole ones.
        self.frame_unit = params.bytes_per_sample * params.channels
        self._notes: list[ServerEvent] = []  # events of the session as a whole, sent first

    @property
    def speaking(self) -> bool:
        """A segment is open on some channel: someone is speaking (or was, until its pause ends)."""
        return any(core.segmenter.in_speech for core in self.cores)

    def apply(self, given: Input, now: float) -> None:
        """One input from the client's protocol (a keepalive needs nothing: it kept the session open)."""
        if isinstance(given, Audio):
            self.audio(given.data, now)
        elif isinstance(given, EndOfAudio):
            self.end_of_audio(now)
        elif isinstance(given, Finalize):
            self.finalize(now)
        elif isinstance(given, Configure):
            self.configure(given.prompt)

    def audio(self, frame: bytes, now: float) -> None:
        """One binary frame from the client. Raises ProtocolError for a frame it must refuse."""
        check_frame_size(len(frame), self.config.max_frame_bytes)
        if len(frame) % self.frame_unit:
            params = self.params
            raise ProtocolError(
                "bad_audio",
                f"binary frame of {len(frame)} bytes does not hold whole samples of {params.channels} "
                f"channel(s) of {params.encoding} ({self.frame_unit} bytes each)",
                CLOSE_UNSUPPORTED_DATA,
            )
        self.metrics.bytes_received.inc(len(frame))
        pcm = decode_pcm16(frame, self.params.encoding)
        for core, channel_pcm in zip(self.cores, split_channels(pcm, len(self.cores)), strict=True):
            core.audio(channel_pcm, now)
        self._after_audio(now)

    def channel_audio(self, channel: int, data: bytes, now: float) -> None:
        """Audio of one channel alone (a telephony track), in the session's encoding."""
        if len(data) % self.params.bytes_per_sample:
            raise ProtocolError(
                "bad_audio",
                f"{len(data)} bytes are not whole {self.params.encoding} samples",
                CLOSE_UNSUPPORTED_DATA,
            )
        self.metrics.bytes_received.inc(len(data))
        self.cores[channel].audio(decode_pcm16(data, self.params.encoding), now)
        self._after_audio(now)

    def _after_audio(self, now: float) -> None:
        if self.eof:  # the length limit ended one channel: it ends them all
            self.end_of_audio(now)

    @property
    def partials(self) -> bool:
        """Partial results are sent (asked for, and not turned off with --partial-ms 0)."""
        return self.cores[0].partials

    @property
    def position(self) -> float:
        """Seconds of audio received so far (on the channel furthest along)."""
        return max(core.segmenter.position for core in self.cores)

    def end_of_audio(self, now: float) -> None:
        for core in self.cores:
            if not core.eof:
                core.end_of_audio(now)

    def configure(self, prompt: str) -> None:
        """A new prompt for the segments that close from now on."""
        for core in self.cores:
            core.prompt = prompt

    def finalize(self, now: float) -> None:
        for core in self.cores:
            core.finalize(now)

    def result(self, result: SegmentResult, now: float) -> None:
        if 0 <= result.channel < len(self.cores):
            self.cores[result.channel].result(result, now)

    def expire(self, now: float) -> None:
        for core in self.cores:
            core.expire(now)

    def sent(self, event: ServerEvent, now: float) -> None:
        channel = event.channel if isinstance(event, Final | Partial | ErrorEvent) else 0
        self.cores[channel].sent(event, now)

    def jobs_to_queue(self) -> list[SegmentJob]:
        return [job for core in self.cores for job in core.jobs_to_queue()]

    def note(self, event: ServerEvent) -> None:
        """An event of the session as a whole (a call's DTMF, say), sent before the channels' next."""
        self._notes.append(event)

    def events_to_send(self) -> list[ServerEvent]:
        notes, self._notes = self._notes, []
        return notes + [event for core in self.cores for event in core.events_to_send()]

    @property
    def has_events(self) -> bool:
        return bool(self._notes) or any(core.has_events for core in self.cores)

    @property
    def eof(self) -> bool:
        return any(core.eof for core in self.cores)

    @property
    def finished(self) -> bool:
        return all(core.finished for core in self.cores)

    @property
    def ending(self) -> ProtocolError | None:
        return next((core.ending for core in self.cores if core.ending is not None), None)

    def next_deadline(self) -> float | None:
        return min((d for core in self.cores if (d := core.next_deadline()) is not None), default=None)
