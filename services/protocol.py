"""Message schemas, pure and I/O free.

Three wire formats live here and nowhere else:

* the WebSocket protocol between a client and the ingest (query parameters,
  client text messages, server events);
* the Redis stream entry that carries one speech segment to a transcriber;
* the pub/sub message that carries one segment's result back to the ingest.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

SAMPLE_RATES = (8000, 16000, 32000, 48000)
DEFAULT_SAMPLE_RATE = 16000
MODEL_RATE = 16000
# Names of the sample-rate parameter: ours, and the two Oriserve's client and server use.
RATE_PARAMS = ("sample_rate", "sampling_rate", "samplingRate")

# WebSocket close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013


# Every ``code`` an error event can carry (docs/protocols.md's table explains each).
ERROR_CODES = (
    "bad_sample_rate",
    "bad_parameter",
    "unknown_call",
    "call_lost",
    "unknown_model",
    "unauthorized",
    "no_transcriber",
    "bad_audio",
    "frame_too_big",
    "bad_message",
    "idle_timeout",
    "session_too_long",
    "slow_client",
    "timeout",
    "transcription_failed",
    "backend_unavailable",
    "internal_error",
)


class ProtocolError(Exception):
    """A client did something the protocol does not allow.

    ``code`` is the machine-readable error code sent to the client, ``message``
    the human sentence, ``close_code`` the WebSocket close code that follows.
    """

    def __init__(self, code: str, message: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close_code = close_code


# --- client -> server -------------------------------------------------------


ENCODINGS = ("linear16", "mulaw", "alaw")  # 16-bit PCM, G.711 mu-law, G.711 A-law
MAX_CHANNELS = 2
ROLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Every query parameter a session may carry; anything else is refused, not ignored.
QUERY_PARAMS = (
    *RATE_PARAMS,
    "model",
    "partials",
    "words",
    "prompt",
    "encoding",
    "channels",
    "roles",
    "turns",
    "token",
)
# A session's vocabulary for the model (Whisper's initial prompt): names, products, jargon.
PROMPT_MAX_CHARS = 500


@dataclass(frozen=True)
class SessionParams:
    """What a client asks for in the query string of its WebSocket URL."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    model: str | None = None
    partials: bool = False
    encoding: str = "linear16"
    channels: int = 1
    roles: tuple[str, ...] = ()  # a name per channel, or none
    words: bool = False  # word timings and confidence on every final
    prompt: str = ""  # the model's initial prompt: words to expect
    turns: bool = False  # our protocol: also tell speech_started, eager_end and turn_resumed

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "linear16" else 1


def _last(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name, [])
    return values[-1].strip() if values else None


def check_prompt(prompt: str) -> str:
    """A session's prompt, bounded: refused when longer than PROMPT_MAX_CHARS."""
    if len(prompt) > PROMPT_MAX_CHARS:
        raise ProtocolError(
            "bad_parameter", f"prompt of {len(prompt)} characters; at most {PROMPT_MAX_CHARS}"
        )
    return prompt.strip()


def _prompt(params: dict[str, list[str]]) -> str:
    return check_prompt(_last(params, "prompt") or "")


def _flag(params: dict[str, list[str]], name: str) -> bool:
    return (_last(params, name) or "").lower() in ("1", "true", "yes", "on")


def parse_query(query: str) -> SessionParams:
    """Parse ``sample_rate=...&model=...``; raise ProtocolError for an unknown parameter or a
    value the server cannot honour (a client must never get audio read the wrong way)."""
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - set(QUERY_PARAMS))
    if unknown:
        raise ProtocolError(
            "bad_parameter",
            f"unknown query parameter {unknown[0]!r}; known: {', '.join(QUERY_PARAMS)}",
        )
    rates = [value for name in RATE_PARAMS for value in params.get(name, [])]
    sample_rate = DEFAULT_SAMPLE_RATE
    if rates:
        if len(set(rates)) > 1:
            raise ProtocolError("bad_sample_rate", f"conflicting sample rates {sorted(set(rates))}")
        try:
            sample_rate = int(rates[0])
        except ValueError:
            raise ProtocolError("bad_sample_rate", f"sample rate {rates[0]!r} is not a number") from None
        if sample_rate not in SAMPLE_RATES:
            raise ProtocolError(
                "bad_sample_rate",
                f"sample rate {sample_rate} Hz is not supported; use one of "
                + ", ".join(str(r) for r in SAMPLE_RATES),
            )
    partials, words = (_flag(params, "partials"), _flag(params, "words"))
    encoding = (_last(params, "encoding") or "linear16").lower()
    if encoding not in ENCODINGS:
        raise ProtocolError(
            "bad_parameter", f"encoding {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}"
        )
    raw_channels = _last(params, "channels") or "1"
    if raw_channels not in [str(n) for n in range(1, MAX_CHANNELS + 1)]:
        raise ProtocolError(
            "bad_parameter", f"channels={raw_channels!r}: 1 or {MAX_CHANNELS} (interleaved) are supported"
        )
    channels = int(raw_channels)
    roles = tuple((_last(params, "roles") or "").split(",")) if _last(params, "roles") else ()
    named = all(ROLE_NAME.fullmatch(role) for role in roles) and len(set(roles)) == len(roles)
    if roles and (len(roles) != channels or not named):
        raise ProtocolError(
            "bad_parameter",
            f"roles={','.join(roles)!r}: one distinct name per channel ({channels}), letters, digits, _ or -",
        )
    model = _last(params, "model") or None
    layout = (encoding, channels, roles)
    return SessionParams(
        sample_rate, model, partials, *layout, words, _prompt(params), _flag(params, "turns")
    )


# What a telephony stream may set, in its URL or in the platform's custom parameters of ``start``
# (Twilio's ``<Parameter>``s, Exotel's ``custom_parameters``, Plivo's ``extraHeaders``), by the
# names of our own query parameters. ``token`` is the API key (admission checks it).
CALL_PARAMS = ("model", "partials", "words", "prompt", "token")


def parse_call_query(query: str, custom: dict[str, str] | None = None) -> SessionParams:
    """A telephony stream's settings: from its URL's query and from its ``start``'s custom
    parameters (``custom``, which win: Twilio's stream URL can carry no query string at all).
    ``model``, ``partials``, ``words`` and ``prompt`` are ours; any other parameter is the
    platform's own or its user's (Exotel puts its sample rate there) and left to them."""
    params = parse_qs(query, keep_blank_values=True)
    for name, value in (custom or {}).items():
        if name in CALL_PARAMS:
            params[name] = [value]
    model = _last(params, "model") or None
    partials, words = _flag(params, "partials"), _flag(params, "words")
    return SessionParams(model=model, partials=partials, words=words, prompt=_prompt(params))


def check_frame_size(size: int, limit: int) -> None:
    """A frame over ``limit`` bytes (``--max-frame-bytes``) is refused."""
    if size > limit:
        raise ProtocolError("frame_too_big", f"frame of {size} bytes; the limit is {limit}", CLOSE_TOO_BIG)


# --- server -> client -------------------------------------------------------


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _channel(channel: int, role: str | None) -> dict[str, Any]:
    """Where an event belongs: its channel (0 for mono), and the channel's role when named."""
    return {"channel": channel} if role is None else {"channel": channel, "role": role}


@dataclass(frozen=True)
class Ready:
    session: str
    model: str
    sample_rate: int
    partials: bool = False
    encoding: str = "linear16"
    channels: int = 1
    roles: tuple[str, ...] = ()
    words: bool = False
    type: Literal["ready"] = "ready"

    def to_json(self) -> str:
        out = asdict(self)
        out["roles"] = list(self.roles)
        return _dump(out)


@dataclass(frozen=True)
class Final:
    """One segment's transcript. ``text`` keeps Oriserve's clients working."""

    text: str
    segment: int
    start: float
    end: float
    latency: float
    channel: int = 0
    role: str | None = None
    words: tuple[dict[str, Any], ...] = ()  # {word, start, end, confidence}, stream seconds
    confidence: float | None = None
    # Why its segment closed: "silence" (a pause), "max_length", "eof", "finalize" (asked for).
    ended: str = ""
    # Nothing was said (noise, a known hallucination): our protocol sends no such final, but a
    # protocol that answers every segment (OpenAI's committed items) or every finalize does.
    silent: bool = False
    type: Literal["final"] = "final"

    def to_json(self) -> str:
        out: dict[str, Any] = {
            "type": self.type,
            "text": self.text,
            "segment": self.segment,
            **_channel(self.channel, self.role),
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "latency": round(self.latency, 3),
        }
        if self.confidence is not None:
            out |= {"confidence": self.confidence, "words": list(self.words)}
        return _dump(out)


@dataclass(frozen=True)
class Partial:
    """The transcript so far of a segment still being spoken; its final follows."""

    text: str
    segment: int
    channel: int = 0
    role: str | None = None
    start: float = 0.0  # stream seconds of the audio it transcribes
    end: float = 0.0
    type: Literal["partial"] = "partial"

    def to_json(self) -> str:
        return _dump(
            {
                "type": self.type,
                "text": self.text,
                "segment": self.segment,
                **_channel(self.channel, self.role),
            }
        )


@dataclass(frozen=True)
class ErrorEvent:
    """``segment`` (and its channel) when it concerns one segment: the session goes on."""

    code: str
    message: str
    segment: int | None = None
    channel: int = 0
    role: str | None = None
    type: Literal["error"] = "error"

    def to_json(self) -> str:
        out: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.segment is not None:
            out |= {"segment": self.segment, **_channel(self.channel, self.role)}
        return _dump(out)


# Every ``code`` a warning event can carry: the audio reaches the model, but may be heard badly.
WARNING_CODES = ("quiet_audio", "clipped_audio")


@dataclass(frozen=True)
class WarningEvent:
    """The channel's audio is transcribed, but may be heard badly: its speech peaks low
    (``quiet_audio``) or it reaches full scale (``clipped_audio``). Once per code and channel."""

    code: str
    message: str
    level_dbfs: float  # the peak of the segment that showed it
    channel: int = 0
    role: str | None = None
    type: Literal["warning"] = "warning"

    def to_json(self) -> str:
        out = {"type": self.type, "code": self.code, "message": self.message, "level_dbfs": self.level_dbfs}
        return _dump(out | _channel(self.channel, self.role))


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began on a channel, ``at`` stream seconds (where its segment will start)."""

    at: float
    channel: int = 0
    role: str | None = None
    type: Literal["speech_started"] = "speech_started"

    def to_json(self) -> str:
        return _dump({"type": self.type, "at": round(self.at, 3), **_channel(self.channel, self.role)})


@dataclass(frozen=True)
class SpeechEnded:
    """The speech that began closed: as ``segment`` (queued for transcription; its final follows),
    or as no segment at all (``None``: it was noise, or too short to be speech)."""

    segment: int | None
    start: float
    end: float
    ended: str  # why: as Final.ended, or the reason it was dropped ("noise", "too_short", ...)
    channel: int = 0
    role: str | None = None
    type: Literal["speech_ended"] = "speech_ended"

    def to_json(self) -> str:
        out = {
            "type": self.type,
            "segment": self.segment,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
        }
        return _dump(out | {"ended": self.ended} | _channel(self.channel, self.role))


@dataclass(frozen=True)
class EagerEnd:
    """Eager endpointing's guess came back while the pause is still being confirmed: if no more
    speech comes, ``text`` is the segment's final (a voice agent may start its reply now)."""

    text: str
    segment: int
    start: float
    end: float
    channel: int = 0
    role: str | None = None
    type: Literal["eager_end"] = "eager_end"

    def to_json(self) -> str:
        span = {"start": round(self.start, 3), "end": round(self.end, 3)}
        return _dump(
            {"type": self.type, "text": self.text, "segment": self.segment}
            | span
            | _channel(self.channel, self.role)
        )


@dataclass(frozen=True)
class TurnResumed:
    """Speech came back after an ``EagerEnd``: its text is not the final after all."""

    segment: int
    at: float
    channel: int = 0
    role: str | None = None
    type: Literal["turn_resumed"] = "turn_resumed"

    def to_json(self) -> str:
        out = {"type": self.type, "segment": self.segment, "at": round(self.at, 3)}
        return _dump(out | _channel(self.channel, self.role))


@dataclass(frozen=True)
class Done:
    type: Literal["done"] = "done"

    def to_json(self) -> str:
        return _dump(asdict(self))


@dataclass(frozen=True)
class CallEvent:
    """A moment on a telephony call's timeline (``start``, ``dtmf``, ``mark``, ``stop``),
    recorded in the call's event stream beside its transcripts."""

    type: str
    fields: dict[str, Any]

    def to_json(self) -> str:
        return _dump({"type": self.type, **self.fields})


ServerEvent = (
    Ready
    | Partial
    | Final
    | ErrorEvent
    | WarningEvent
    | SpeechStarted
    | SpeechEnded
    | EagerEnd
    | TurnResumed
    | Done
    | CallEvent
)


# --- ingest -> transcriber: one stream entry per segment (or pack of a file's) -


@dataclass(frozen=True)
class Part:
    """One segment of a pack (``SegmentJob.parts``): its number and its ``start``/``end`` in the
    stream, and where its audio lies in the pack's (``offset`` and ``length``, seconds)."""

    segment: int
    start: float
    end: float
    offset: float
    length: float

    def to_list(self) -> list[float]:
        return [self.segment, self.start, self.end, self.offset, self.length]

    @classmethod
    def from_list(cls, raw: Any) -> Part:
        if not isinstance(raw, list) or len(raw) != 5:
            raise ValueError(f"a part is [segment, start, end, offset, length], not {raw!r}")
        segment, start, end, offset, length = raw
        return cls(int(segment), float(start), float(end), float(offset), float(length))


@dataclass(frozen=True)
class SegmentJob:
    """A speech segment waiting in a model's stream.

    ``pcm`` is 16-bit little-endian mono at 16 kHz. ``start``/``end`` are seconds
    within the client's stream; ``endpoint_at`` and ``enqueued_at`` are wall-clock
    times (``time.time()``) used for latency.
    """

    session: str
    segment: int
    pcm: bytes
    start: float
    end: float
    endpoint_at: float
    enqueued_at: float
    partial: bool = False  # a partial request for a segment still open
    eager: int = 0  # a guess of eager endpointing (its token), made before the pause was confirmed
    channel: int = 0  # the session's audio channel it comes from; echoed by its result
    words: bool = False  # time its words too
    prompt: str = ""  # the session's vocabulary for the model
    parts: tuple[Part, ...] = ()  # a pack's segments, in order; () for a single segment

    def to_fields(self) -> dict[str, bytes | str]:
        return {
            "parts": json.dumps([part.to_list() for part in self.parts]) if self.parts else "",
            "prompt": self.prompt,
            "partial": "1" if self.partial else "0",
            "words": "1" if self.words else "0",
            "eager": str(self.eager),
            "channel": str(self.channel),
            "session": self.session,
            "segment": str(self.segment),
            "pcm": self.pcm,
            "start": repr(self.start),
            "end": repr(self.end),
            "endpoint_at": repr(self.endpoint_at),
            "enqueued_at": repr(self.enqueued_at),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> SegmentJob:
        """Decode a stream entry; raise ValueError if it is malformed."""
        try:
            return cls(
                session=fields[b"session"].decode(),
                segment=int(fields[b"segment"]),
                pcm=fields[b"pcm"],
                start=float(fields[b"start"]),
                end=float(fields[b"end"]),
                endpoint_at=float(fields[b"endpoint_at"]),
                enqueued_at=float(fields[b"enqueued_at"]),
                partial=fields.get(b"partial") == b"1",
                eager=int(fields.get(b"eager", b"0")),
                channel=int(fields.get(b"channel", b"0")),
                words=fields.get(b"words") == b"1",
                prompt=fields.get(b"prompt", b"").decode(),
                parts=tuple(Part.from_list(part) for part in json.loads(fields.get(b"parts") or b"[]")),
            )
        except (KeyError, UnicodeDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"malformed segment entry: {exc!r}") from None

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / MODEL_RATE

    @property
    def segments(self) -> list[int]:
        """The segment numbers this job answers: its parts', or its own."""
        return [part.segment for part in self.parts] or [self.segment]


# --- transcriber -> ingest: one pub/sub message per segment -------------------


def _words(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise ValueError("words must be a list")
    return [
        {
            "word": str(w["word"]),
            "start": float(w["start"]),
            "end": float(w["end"]),
            "confidence": float(w["confidence"]),
        }
        for w in raw
    ]


Outcome = Literal["text", "empty", "error"]


@dataclass(frozen=True)
class SegmentResult:
    """What a transcriber made of one segment.

    ``outcome`` is ``text`` (send it), ``empty`` (nothing worth sending: silence,
    noise or a known hallucination; ``reason`` says which) or ``error``.
    """

    session: str
    segment: int
    outcome: Outcome
    text: str = ""
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    partial: bool = False
    eager: int = 0  # the job's eager token, echoed
    channel: int = 0  # the job's channel, echoed
    words: list[dict[str, Any]] = field(default_factory=list)  # timed words, stream seconds
    confidence: float | None = None

    def to_json(self) -> str:
        return _dump(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> SegmentResult:
        """Decode a pub/sub message; raise ValueError if it is malformed."""
        try:
            data = json.loads(raw)
            outcome = data["outcome"]
            if outcome not in ("text", "empty", "error"):
                raise ValueError(f"unknown outcome {outcome!r}")
            return cls(
                session=str(data["session"]),
                segment=int(data["segment"]),
                outcome=outcome,
                text=str(data.get("text", "")),
                reason=str(data.get("reason", "")),
                timings={str(k): float(v) for k, v in data.get("timings", {}).items()},
                partial=bool(data.get("partial", False)),
                eager=int(data.get("eager", 0)),
                channel=int(data.get("channel", 0)),
                words=_words(data.get("words", [])),
                confidence=None if data.get("confidence") is None else float(data["confidence"]),
            )
        except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:
            raise ValueError(f"malformed result message: {exc!r}") from None
