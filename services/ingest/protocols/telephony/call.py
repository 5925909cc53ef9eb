"""One telephony call's decisions: sans-I/O.

Built from the platform's ``start`` (``services.ingest.protocols.telephony.frames``): each track the call
announced is a channel with its own VAD and segments (``services.ingest.core.channels``), named by its
track. Media of a track goes to its channel (24 kHz PCM is resampled to 16 kHz first, as the VAD
takes 8/16/32/48 kHz); DTMF, marks and the stop land on the call's timeline as ``CallEvent``s,
at the call's position in seconds of audio. Everything the call makes is an event for its event
stream: ``start``, the transcripts of every track (``channel`` + ``track``), ``dtmf``, ``mark``,
``stop``, ``done``.
"""

from __future__ import annotations

import json
from typing import Any

from services.audio import StreamResampler
from services.ingest.config import IngestConfig
from services.ingest.core.channels import Channels
from services.ingest.protocols.telephony.frames import Connected, Dtmf, Mark, Media, Message, Start, Stop
from services.metrics import IngestMetrics
from services.protocol import MODEL_RATE, CallEvent, ProtocolError, ServerEvent, SessionParams
from services.segmenter import VadFn

VAD_RATES = (8000, 16000)  # the call rates the segmenter takes as they are


class Call:
    def __init__(
        self,
        start: Start,
        session_id: str,
        model: str,
        options: SessionParams,  # the stream URL's partials and words
        config: IngestConfig,
        metrics: IngestMetrics,
        now: float,
        vad: VadFn | None = None,
    ) -> None:
        self.start = start
        resample = start.sample_rate not in VAD_RATES
        self.resamplers = [StreamResampler(start.sample_rate) for _ in start.tracks] if resample else []
        rate = MODEL_RATE if resample else start.sample_rate
        layout = (start.encoding, len(start.tracks), start.tracks)
        params = SessionParams(
            rate, None, options.partials, *layout, words=options.words, prompt=options.prompt
        )
        self.channels = Channels(session_id, model, params, config, metrics, now, vad)
        self.channels.note(
            CallEvent(
                "start",
                {
                    "platform": start.platform,
                    "call": start.call,
                    "stream": start.stream,
                    "tracks": list(start.tracks),
                    "encoding": start.encoding,
                    "sample_rate": start.sample_rate,
                    "custom": {k: v for k, v in start.custom.items() if k != "token"},  # never the key
                    "model": model,
                    "session": session_id,
                },
            )
        )

    def message(self, message: Message, now: float) -> None:
        """One parsed frame from the platform, after ``start``."""
        if isinstance(message, Media):
            self._media(message, now)
        elif isinstance(message, Dtmf):
            track = message.track if message.track in self.start.tracks else self.start.tracks[0]
            self._note("dtmf", digit=message.digit, channel=self.start.tracks.index(track), track=track)
        elif isinstance(message, Mark):
            self._note("mark", name=message.name)
        elif isinstance(message, Stop):
            self.hang_up(now, message.reason or "stop")
        elif isinstance(message, Start):
            raise ProtocolError("bad_message", "a second start in one stream")
        else:
            assert isinstance(message, Connected)

    def hang_up(self, now: float, reason: str) -> None:
        """The call ended (``stop``, or the platform closed the socket): what was said is still
        transcribed, and ``done`` follows the last transcript."""
        if self.channels.eof:
            return
        for channel, resampler in enumerate(self.resamplers):
            self.channels.cores[channel].audio(resampler.flush(), now)
        self.channels.end_of_audio(now)
        self._note("stop", reason=reason)

    def _media(self, media: Media, now: float) -> None:
        tracks = self.start.tracks
        if self.channels.eof:
            raise ProtocolError("bad_message", "media after stop")
        if media.track in tracks:
            channel = tracks.index(media.track)
        elif not media.track and (len(tracks) == 1 or self.start.platform == "exotel"):
            channel = 0
        else:
            raise ProtocolError(
                "bad_message", f"media on track {media.track!r}; start announced {list(tracks)}"
            )
        if not self.resamplers:
            self.channels.channel_audio(channel, media.audio, now)
            return
        if len(media.audio) % 2:
            raise ProtocolError("bad_audio", f"{len(media.audio)} bytes are not whole 16-bit samples")
        self.channels.channel_audio(channel, self.resamplers[channel].feed(media.audio), now)

    def _note(self, kind: str, **fields: Any) -> None:
        self.channels.note(CallEvent(kind, {**fields, "at": round(self.channels.position, 3)}))


def record(event: ServerEvent, stream: str) -> str:
    """An event as its call's event stream keeps it: our event, its channel's role named ``track``,
    and the platform's ``stream`` it belongs to (one call can have several: Twilio's
    ``<Start>``/``<Stop>``, two ``<Stream>``s), so that segment numbers, ``done`` and the rest are
    each stream's own."""
    data = json.loads(event.to_json())
    if "role" in data:
        data["track"] = data.pop("role")
    data["stream"] = stream
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
