"""Message schemas, pure and I/O free.

Three wire formats live here and nowhere else:

* the WebSocket protocol between a client and the ingest (query parameters,
  client text messages, server events);
* the Redis stream entry that carries one speech segment to a transcriber;
* the pub/sub message that carries one segment's result back to the ingest.
"""

from __future__ import annotations

import json
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


# Every ``code`` an error event can carry (the README's table explains each).
ERROR_CODES = (
    "bad_sample_rate",
    "unknown_model",
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


@dataclass(frozen=True)
class SessionParams:
    """What a client asks for in the query string of its WebSocket URL."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    model: str | None = None
    partials: bool = False


def parse_query(query: str) -> SessionParams:
    """Parse ``sample_rate=...&model=...``; raise ProtocolError for bad values."""
    params = parse_qs(query, keep_blank_values=True)
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
    models = params.get("model", [])
    model = models[-1].strip() if models else None
    asked = params.get("partials", [])
    partials = bool(asked) and asked[-1].strip().lower() in ("1", "true", "yes", "on")
    return SessionParams(sample_rate=sample_rate, model=model or None, partials=partials)


def check_audio_frame(frame: bytes) -> None:
    """A binary frame must hold whole 16-bit samples."""
    if len(frame) % 2:
        raise ProtocolError(
            "bad_audio",
            f"binary frame of {len(frame)} bytes is not 16-bit PCM (odd length)",
            CLOSE_UNSUPPORTED_DATA,
        )


@dataclass(frozen=True)
class Eof:
    """The client has no more audio."""


ClientMessage = Eof


def parse_text(text: str) -> ClientMessage:
    """Parse a text frame from the client: ``EOF`` or ``{"type": "eof"}``."""
    if text.strip() == "EOF":
        return Eof()
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError("bad_message", f"text frame is not JSON: {text[:60]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "text frame must be a JSON object")
    kind = message.get("type")
    if kind == "eof":
        return Eof()
    raise ProtocolError("bad_message", f"unknown message type {kind!r}; expected 'eof'")


# --- server -> client -------------------------------------------------------


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Ready:
    session: str
    model: str
    sample_rate: int
    partials: bool = False
    type: Literal["ready"] = "ready"

    def to_json(self) -> str:
        return _dump(asdict(self))


@dataclass(frozen=True)
class Final:
    """One segment's transcript. ``text`` keeps Oriserve's clients working."""

    text: str
    segment: int
    start: float
    end: float
    latency: float
    type: Literal["final"] = "final"

    def to_json(self) -> str:
        return _dump(
            {
                "type": self.type,
                "text": self.text,
                "segment": self.segment,
                "start": round(self.start, 3),
                "end": round(self.end, 3),
                "latency": round(self.latency, 3),
            }
        )


@dataclass(frozen=True)
class Partial:
    """The transcript so far of a segment still being spoken; its final follows."""

    text: str
    segment: int
    type: Literal["partial"] = "partial"

    def to_json(self) -> str:
        return _dump({"type": self.type, "text": self.text, "segment": self.segment})


@dataclass(frozen=True)
class ErrorEvent:
    code: str
    message: str
    segment: int | None = None
    type: Literal["error"] = "error"

    def to_json(self) -> str:
        out: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.segment is not None:
            out["segment"] = self.segment
        return _dump(out)


@dataclass(frozen=True)
class Done:
    type: Literal["done"] = "done"

    def to_json(self) -> str:
        return _dump(asdict(self))


ServerEvent = Ready | Partial | Final | ErrorEvent | Done


# --- ingest -> transcriber: one stream entry per segment ---------------------


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

    def to_fields(self) -> dict[str, bytes | str]:
        return {
            "partial": "1" if self.partial else "0",
            "eager": str(self.eager),
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
            )
        except (KeyError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed segment entry: {exc!r}") from None

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / MODEL_RATE


# --- transcriber -> ingest: one pub/sub message per segment -------------------

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
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed result message: {exc!r}") from None
