"""OpenAI Realtime transcription (``GET /v1/realtime?intent=transcription``), the GA shape.

Sans-I/O. ``session.created`` first (a session of type ``transcription``); ``session.update``
sets ``audio.input``'s ``format`` (``audio/pcm`` at 24 kHz, ``audio/pcmu``, ``audio/pcma``),
``transcription`` (``prompt`` becomes the session's prompt; ``model`` and ``language`` are
accepted and echoed: the pool chosen at the handshake transcribes, by its own language policy)
and ``turn_detection``, answered by ``session.updated``. The beta form
``transcription_session.update`` (``input_audio_format`` pcm16 | g711_ulaw | g711_alaw,
``input_audio_transcription``, ``turn_detection``) is taken too, answered by
``transcription_session.updated``.

Audio comes base64 in ``input_audio_buffer.append``; it is decoded and resampled here to the
16 kHz linear16 the session was opened with, so the format may change mid-session (each resampler
begins with a lead of under 2 ms of silence, so that it holds nothing a VAD frame waits for:
``services.audio.StreamResampler``).

Segments are always cut by our VAD with the ingest's ``--silence-ms``: ``turn_detection``
(``server_vad`` with any ``silence_duration_ms``, ``semantic_vad``, or ``null`` for manual
commits) is accepted and echoed but changes nothing, since the core has no per-session pause
length. ``input_audio_buffer.commit`` closes the open segment now (its item follows as usual;
with no speech open nothing follows). ``.clear`` drops only the few samples the resampler holds:
audio already handed to the VAD is transcribed.

Each speech is an item: ``input_audio_buffer.speech_started``, ``.speech_stopped`` and
``.committed`` (``audio_start_ms``/``audio_end_ms`` in stream milliseconds), our partials as
``conversation.item.input_audio_transcription.delta`` and the final as ``.completed``; speech our
VAD drops as noise still completes, with an empty transcript. A delta is the new suffix of the
partial text when the partial extends the previous one, else (the model rewrote it) the whole new
text; a partial's trailing ellipsis (Whisper's mark of words cut off) is left out, so that the
next partial usually extends it. ``completed``'s transcript is always the whole text. A bad
client event is answered by an ``error`` event in OpenAI's shape and the session goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from services.audio import StreamResampler, decode_pcm16
from services.catalog import requested_pool
from services.ingest.core.inputs import Audio, Configure, Finalize, Input
from services.ingest.protocols import query
from services.ingest.protocols.adapter import Frame, Opened, Reply
from services.protocol import (
    MODEL_RATE,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    ServerEvent,
    SessionParams,
    SpeechEnded,
    SpeechStarted,
    check_prompt,
)

# Each format OpenAI names: our encoding of it and its rate.
FORMATS = {"audio/pcm": ("linear16", 24000), "audio/pcmu": ("mulaw", 8000), "audio/pcma": ("alaw", 8000)}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
TURN_DETECTION = ("server_vad", "semantic_vad")
LANGUAGES = ("hi", "en")  # what the pools transcribe; none given: the pool's own policy
QUERY = ("intent", "model", "token")
SESSION_DEFAULTS: dict[str, Any] = {
    "format": {"type": "audio/pcm", "rate": 24000},
    "noise_reduction": None,
    "turn_detection": {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
    },
}


@dataclass
class Invalid(Exception):
    """A client event OpenAI's servers would answer with an ``error``: the session goes on."""

    code: str
    message: str
    param: str | None = None


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class OpenAIRealtime:
    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._session_id = f"sess_{self._prefix}"
        self._expires_at = int(time.time()) + 3600
        self._count = 0
        self.input: dict[str, Any] = dict(SESSION_DEFAULTS)  # the session's ``audio.input``
        self._format = "audio/pcm"
        self._resampler = StreamResampler(24000, MODEL_RATE)
        self._odd = b""  # a trailing byte of 16-bit PCM, until its sample is whole
        self._item: str | None = None  # the item of the speech now open
        self._items: dict[int, str] = {}  # segment -> item, until its transcript is told
        self._said: dict[str, str] = {}  # item -> its text so far (what the deltas added up to)
        self._previous: str | None = None  # the last item committed

    def _id(self, kind: str) -> str:
        self._count += 1
        return f"{kind}_{self._prefix}{self._count:06d}"

    def _event(self, kind: str, body: dict[str, Any]) -> str:
        return _dump({"type": kind, "event_id": self._id("event")} | body)

    def _session(self) -> dict[str, Any]:
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self._session_id,
            "expires_at": self._expires_at,
            "audio": {"input": self.input},
            "include": [],
        }

    # --- the session -----------------------------------------------------------------------------

    def greeting(self, opened: Opened) -> list[Frame]:
        self._session_id = "sess_" + opened.session.replace("-", "")[:24]
        self.input["transcription"] = {
            "model": opened.model,
            "prompt": opened.params.prompt,
            "language": None,
        }
        return [self._event("session.created", {"session": self._session()})]

    def idle_timeout(self) -> float | None:
        return None

    def refusal(self, error: ProtocolError) -> list[Frame]:
        return [self._error("server_error", Invalid(error.code, error.message))]

    def _error(self, kind: str, invalid: Invalid, about: str | None = None) -> str:
        error = {"type": kind, "code": invalid.code, "message": invalid.message}
        return self._event("error", {"error": error | {"param": invalid.param, "event_id": about}})

    # --- client events ---------------------------------------------------------------------------

    def take(self, message: Frame) -> list[Input | Reply]:
        event: Any = None
        try:
            if isinstance(message, bytes):
                raise Invalid(
                    "invalid_event",
                    "binary frames are not events: send audio base64 in input_audio_buffer.append",
                )
            try:
                event = json.loads(message)
            except (ValueError, RecursionError):
                raise Invalid("invalid_json", "the event is not valid JSON") from None
            if not isinstance(event, dict):
                raise Invalid("invalid_event", "an event is a JSON object")
            return self._take(event)
        except Invalid as invalid:
            about = event.get("event_id") if isinstance(event, dict) else None
            return [
                Reply(
                    self._error("invalid_request_error", invalid, about if isinstance(about, str) else None)
                )
            ]

    def _take(self, event: dict[str, Any]) -> list[Input | Reply]:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            return self._append(event.get("audio"))
        if kind == "input_audio_buffer.commit":
            return [Finalize()]
        if kind == "input_audio_buffer.clear":
            self._resampler, self._odd = StreamResampler(FORMATS[self._format][1], MODEL_RATE), b""
            return [Reply(self._event("input_audio_buffer.cleared", {}))]
        if kind == "session.update":
            session = _object(event.get("session"), "session")
            if session.get("type", "transcription") != "transcription":
                raise Invalid(
                    "invalid_value",
                    "this server only transcribes: session.type is 'transcription'",
                    "session.type",
                )
            audio = _object(session.get("audio", {}), "session.audio")
            inputs = self._update(
                _object(audio.get("input", {}), "session.audio.input"), "session.audio.input"
            )
            return [*inputs, Reply(self._event("session.updated", {"session": self._session()}))]
        if kind == "transcription_session.update":
            session = _object(event.get("session"), "session")
            inputs = self._update(_beta(session), "session")
            return [*inputs, Reply(self._event("transcription_session.updated", {"session": session}))]
        known = "input_audio_buffer.append, .commit, .clear, session.update, transcription_session.update"
        raise Invalid(
            "invalid_value",
            f"unknown event type {kind!r} for a transcription session; expected {known}",
            "type",
        )

    def _append(self, audio: Any) -> list[Input | Reply]:
        if not isinstance(audio, str):
            raise Invalid("invalid_value", "input_audio_buffer.append needs 'audio', base64", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid("invalid_value", "'audio' is not valid base64", "audio") from None
        encoding = FORMATS[self._format][0]
        if encoding == "linear16":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
        pcm = self._resampler.feed(decode_pcm16(data, encoding))
        return [Audio(pcm)] if pcm else []

    def _update(self, given: dict[str, Any], at: str) -> list[Input | Reply]:
        """Apply ``audio.input`` settings (all checked before any is applied)."""
        inputs: list[Input | Reply] = []
        fmt = self._format
        if "format" in given:
            fmt = _format(_object(given["format"], f"{at}.format"), f"{at}.format")
        transcription = self.input["transcription"]
        if "transcription" in given:
            transcription = transcription | _object(given["transcription"], f"{at}.transcription")
            language = transcription.get("language")
            if language not in (None, "", *LANGUAGES):
                raise Invalid(
                    "invalid_value",
                    f"language {language!r}: this service transcribes hi and en",
                    f"{at}.transcription.language",
                )
            prompt = transcription.get("prompt") or ""
            if not isinstance(prompt, str):
                raise Invalid("invalid_type", "prompt is a string", f"{at}.transcription.prompt")
            try:
                inputs.append(Configure(check_prompt(prompt)))
            except ProtocolError as error:
                raise Invalid("invalid_value", error.message, f"{at}.transcription.prompt") from None
        turn = given.get("turn_detection", self.input["turn_detection"])
        if turn is not None and _object(turn, f"{at}.turn_detection").get("type") not in TURN_DETECTION:
            raise Invalid(
                "invalid_value",
                f"turn_detection.type: one of {', '.join(TURN_DETECTION)}, or null",
                f"{at}.turn_detection.type",
            )
        if fmt != self._format:
            flushed = self._resampler.flush()  # the old format's last samples
            inputs[:0] = [Audio(flushed)] if flushed else []
            self._format, self._odd = fmt, b""
            self._resampler = StreamResampler(FORMATS[fmt][1], MODEL_RATE)
        self.input |= {"format": {"type": fmt} | ({"rate": 24000} if fmt == "audio/pcm" else {})}
        self.input |= {"transcription": transcription, "turn_detection": turn}
        if "noise_reduction" in given:
            self.input["noise_reduction"] = given["noise_reduction"]
        return inputs

    # --- server events ---------------------------------------------------------------------------

    def render(self, event: ServerEvent) -> list[Frame]:
        if isinstance(event, SpeechStarted):
            self._item = self._id("item")
            return [
                self._event(
                    "input_audio_buffer.speech_started",
                    {"audio_start_ms": _ms(event.at), "item_id": self._item},
                )
            ]
        if isinstance(event, Partial) and self._item is not None:
            return self._delta(self._item, event.text)
        if isinstance(event, SpeechEnded):
            return self._commit(event)
        if isinstance(event, Final):
            return [self._completed(self._item_of(event.segment), event.text, event.end - event.start)]
        if isinstance(event, ErrorEvent) and event.segment is not None:
            item = self._item_of(event.segment)
            error = {"type": "server_error", "code": event.code, "message": event.message, "param": None}
            body = {"item_id": item, "content_index": 0, "error": error}
            return [self._event("conversation.item.input_audio_transcription.failed", body)]
        if isinstance(event, ErrorEvent):
            return [self._error("server_error", Invalid(event.code, event.message))]
        return []

    def _delta(self, item: str, text: str) -> list[Frame]:
        if text.endswith(("...", "…")):  # Whisper's mark of words cut off: not part of the text
            text = text.rstrip(".…")
        said = self._said.get(item, "")
        delta = text[len(said) :] if text.startswith(said) else text
        self._said[item] = text
        if not delta:
            return []
        body = {"item_id": item, "content_index": 0, "delta": delta}
        return [self._event("conversation.item.input_audio_transcription.delta", body)]

    def _commit(self, ended: SpeechEnded) -> list[Frame]:
        item, self._item = self._item or self._id("item"), None
        span = {"audio_start_ms": _ms(ended.start), "audio_end_ms": _ms(ended.end)}
        frames: list[Frame] = [
            self._event(
                "input_audio_buffer.speech_stopped", {"audio_end_ms": _ms(ended.end), "item_id": item}
            ),
            self._event(
                "input_audio_buffer.committed", {"item_id": item, "previous_item_id": self._previous} | span
            ),
        ]
        self._previous = item
        if ended.segment is None:  # noise: no transcript will come
            return [*frames, self._completed(item, "", ended.end - ended.start)]
        self._items[ended.segment] = item
        return frames

    def _item_of(self, segment: int) -> str:
        """The item of a segment whose transcript is now told."""
        item = self._items.pop(segment, "") or self._id("item")
        self._said.pop(item, "")
        return item

    def _completed(self, item: str, transcript: str, seconds: float) -> str:
        usage = {"type": "duration", "seconds": round(seconds, 3)}
        body = {"item_id": item, "content_index": 0, "transcript": transcript, "usage": usage}
        return self._event("conversation.item.input_audio_transcription.completed", body)


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("invalid_type", f"{param} is an object", param)
    return value


def _format(given: dict[str, Any], at: str) -> str:
    kind = given.get("type")
    if kind not in FORMATS:
        raise Invalid("invalid_value", f"format type {kind!r}: one of {', '.join(FORMATS)}", f"{at}.type")
    if kind == "audio/pcm" and given.get("rate", 24000) != 24000:
        raise Invalid("invalid_value", "audio/pcm is 24000 Hz", f"{at}.rate")
    return str(kind)


def _beta(session: dict[str, Any]) -> dict[str, Any]:
    """The beta ``transcription_session.update``'s session, as the GA ``audio.input`` settings."""
    given: dict[str, Any] = {}
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        if name not in BETA_FORMATS:
            raise Invalid(
                "invalid_value",
                f"input_audio_format: one of {', '.join(BETA_FORMATS)}",
                "session.input_audio_format",
            )
        given["format"] = {"type": BETA_FORMATS[name]}
    if session.get("input_audio_transcription") is not None:
        given["transcription"] = session["input_audio_transcription"]
    if "turn_detection" in session:
        given["turn_detection"] = session["turn_detection"]
    if "input_audio_noise_reduction" in session:
        given["noise_reduction"] = session["input_audio_noise_reduction"]
    return given


def parse(text: str) -> tuple[SessionParams, OpenAIRealtime]:
    """A ``/v1/realtime`` query: ``intent=transcription`` (or none), ``model`` (OpenAI's names: the
    default pool; a pool's name chooses it), ``token``; anything else is refused."""
    params = parse_qs(text, keep_blank_values=True)
    unknown = sorted(set(params) - set(QUERY))
    if unknown:
        raise query.bad(f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(QUERY)}")
    intent = query.last(params, "intent")
    if intent not in ("", "transcription"):
        raise query.bad(f"intent={intent!r}: this server only transcribes (intent=transcription)")
    model = query.last(params, "model")
    openai_model = model.startswith("gpt-") or model == "whisper-1"
    pool = None if not model or openai_model else requested_pool(model)
    return SessionParams(sample_rate=MODEL_RATE, model=pool, partials=True), OpenAIRealtime()
