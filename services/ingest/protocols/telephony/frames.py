"""Telephony media streams as the platforms send them: sans-I/O.

Twilio Media Streams (``/twilio``), Exotel AgentStream / Voicebot (``/exotel``) and Plivo Audio
Streams (``/plivo``) open a WebSocket to us and push JSON text frames: a ``start`` with the
call's metadata, then ``media`` frames of base64 audio per track, ``dtmf``, ``mark`` and
``stop``. Each platform's frames are parsed here into the same messages; ``call`` (beside this
module) runs a call on them. Written from the platforms' documentation (fixtures in
``tests/fixtures/telephony``):

- Twilio: camelCase; ``start.mediaFormat`` is ``audio/x-mulaw`` at 8000 Hz; ``media.track`` is
  ``inbound`` or ``outbound``; a ``dtmf`` names its track ``inbound_track``.
- Exotel: snake_case (``stream_sid``, ``call_sid``, ``media_format``, ``custom_parameters``);
  16-bit PCM (``raw``/``slin``) at 8, 16 or 24 kHz, or ``audio/x-mulaw`` at 8 kHz; a ``start``
  that lists no tracks may be followed by media of both, tagged with theirs (media without a
  track is the inbound one).
- Plivo: ``start.callId``/``streamId``, ``mediaFormat`` ``audio/x-l16`` (8/16 kHz) or
  ``audio/x-mulaw`` (8 kHz); ``extra_headers`` (the ``<Stream extraHeaders>``) are its custom
  parameters; no ``stop``: the call ends when the socket closes.
- Twilio's stream URL takes no query string: a call's settings and API key come as
  ``<Parameter>``s, in ``start.customParameters``.

Anything else is refused with a clear ``ProtocolError``: a frame that is not JSON, an unknown
event, media before ``start`` or on a track ``start`` did not announce, a payload that is not
base64 or not whole samples.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from services.protocol import CLOSE_UNSUPPORTED_DATA, ProtocolError

Platform = Literal["twilio", "exotel", "plivo"]
PLATFORMS: tuple[Platform, ...] = ("twilio", "exotel", "plivo")
CALL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
RATES = (8000, 16000, 24000)
# How the platforms name 16-bit PCM (Exotel's stream is PCM whatever its "base64" says).
PCM_NAMES = ("raw", "slin", "base64", "audio/x-raw", "audio/x-l16", "audio/l16", "linear16")
MAX_TRACKS = 2
EXOTEL_TRACKS = ("inbound", "outbound")


@dataclass(frozen=True)
class Start:
    platform: Platform
    call: str  # the platform's call id: Twilio callSid, Exotel call_sid, Plivo callId
    stream: str
    tracks: tuple[str, ...]
    encoding: str  # linear16 or mulaw
    sample_rate: int
    custom: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Media:
    track: str
    audio: bytes  # in the call's encoding


@dataclass(frozen=True)
class Dtmf:
    digit: str
    track: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Stop:
    reason: str = ""


@dataclass(frozen=True)
class Connected:
    """The platform's hello before ``start``: nothing to do."""


Message = Start | Media | Dtmf | Mark | Stop | Connected


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_message", message)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _text(obj: dict[str, Any], *names: str) -> str:
    """The first of ``names`` present in ``obj``, as a string."""
    for name in names:
        value = obj.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    raise _bad(f"missing {names[0]!r}")


def _payload(media: dict[str, Any]) -> bytes:
    raw = media.get("payload")
    if not isinstance(raw, str):
        raise _bad("media without a payload")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_audio", "media payload is not base64", CLOSE_UNSUPPORTED_DATA) from None


def _format(encoding: str, rate: Any, platform: Platform) -> tuple[str, int]:
    """(``linear16`` or ``mulaw``, sample rate) from a platform's media format."""
    kind = encoding.lower()
    if "mulaw" in kind or "ulaw" in kind:
        coding = "mulaw"
    elif (
        kind in ("raw", "slin", "base64", "audio/x-raw", "audio/x-l16", "audio/l16", "linear16")
        or "l16" in kind
    ):
        coding = "linear16"
    else:
        raise _bad(f"{platform} media encoding {encoding!r} is not supported (mu-law or 16-bit PCM)")
    try:
        sample_rate = int(rate)
    except (TypeError, ValueError):
        raise _bad(f"sample rate {rate!r} is not a number") from None
    if sample_rate not in RATES or (coding == "mulaw" and sample_rate != 8000):
        raise _bad(
            f"{coding} at {sample_rate} Hz is not supported (8000, 16000 or 24000 Hz PCM; mu-law at 8000 Hz)"
        )
    return coding, sample_rate


def _tracks(value: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t for t in value):
        raise _bad("tracks must be a list of track names")
    tracks = tuple(dict.fromkeys(t.removesuffix("_track") for t in value))
    if len(tracks) > MAX_TRACKS:
        raise _bad(f"{len(tracks)} tracks; at most {MAX_TRACKS} are supported")
    return tracks


def _extra_headers(value: Any) -> dict[str, str]:
    """Plivo's ``extraHeaders`` as its frames carry them: a JSON object, or its text
    (``"{}"``), or the ``key=value,key=value`` form of the ``<Stream extraHeaders>`` attribute."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            pairs = [item.partition("=") for item in value.replace(";", ",").split(",") if item.strip()]
            if not all(sep for _, sep, _ in pairs):
                raise _bad(f"extra_headers {value[:60]!r} is neither JSON nor key=value pairs") from None
            return {key.strip(): val.strip() for key, _, val in pairs}
    return {str(k): str(v) for k, v in _object(value, "extra_headers").items()}


def _call_id(value: str) -> str:
    if not CALL_ID.fullmatch(value):
        raise _bad(f"call id {value[:40]!r} is not 1-128 letters, digits or _.:-")
    return value


def parse(platform: Platform, text: str | bytes) -> Message:
    """One frame from ``platform`` (its streams are JSON text frames, never binary ones)."""
    if isinstance(text, bytes):
        raise _bad("telephony streams send JSON text frames, not binary ones")
    try:
        message = _object(json.loads(text), "a frame")
    except (ValueError, RecursionError):  # nested too deep: RecursionError, not ValueError
        raise _bad(f"frame is not JSON: {text[:60]!r}") from None
    event = message.get("event")
    if event == "connected":
        return Connected()
    if event == "start":
        return _start(platform, _object(message.get("start"), "start"), message)
    if event == "media":
        media = _object(message.get("media"), "media")
        track = media.get("track", "")
        return Media(track.removesuffix("_track") if isinstance(track, str) else "", _payload(media))
    if event == "dtmf":
        dtmf = _object(message.get("dtmf"), "dtmf")
        track = dtmf.get("track", "")
        return Dtmf(_text(dtmf, "digit"), track.removesuffix("_track") if isinstance(track, str) else "")
    if event == "mark" and platform != "plivo":
        return Mark(_text(_object(message.get("mark"), "mark"), "name"))
    if event == "stop" and platform != "plivo":
        stop = message.get("stop")
        return Stop(str(stop.get("reason", "")) if isinstance(stop, dict) else "")
    raise _bad(f"unknown {platform} event {event!r}")


def _start(platform: Platform, start: dict[str, Any], message: dict[str, Any]) -> Start:
    if platform == "twilio":
        form = _object(start.get("mediaFormat"), "start.mediaFormat")
        coding, rate = _format(_text(form, "encoding"), form.get("sampleRate"), platform)
        if form.get("channels", 1) != 1:
            raise _bad("Twilio media must be mono (one channel per track)")
        call, stream = _text(start, "callSid"), _text(start, "streamSid")
        tracks = _tracks(start.get("tracks"), ("inbound",))
        custom = start.get("customParameters") or {}
    elif platform == "exotel":
        form = _object(start.get("media_format", {}), "start.media_format")
        coding, rate = _format(str(form.get("encoding", "raw")), form.get("sample_rate", 8000), platform)
        call = _text(start, "call_sid")
        stream = _text(start, "stream_sid") if "stream_sid" in start else _text(message, "stream_sid")
        # A start that lists no tracks may still be followed by media of both, each tagged with
        # its track: both get a channel (one that never gets audio makes no transcript).
        tracks = _tracks(start.get("tracks"), EXOTEL_TRACKS)
        custom = start.get("custom_parameters") or {}
    else:
        form = _object(start.get("mediaFormat"), "start.mediaFormat")
        coding, rate = _format(_text(form, "encoding"), form.get("sampleRate", 8000), platform)
        call, stream = _text(start, "callId"), _text(start, "streamId")
        tracks = _tracks(start.get("tracks"), ("inbound",))
        custom = _extra_headers(message.get("extra_headers", start.get("extra_headers")))
    if not isinstance(custom, dict):
        raise _bad("custom parameters must be an object")
    return Start(
        platform, _call_id(call), stream, tracks, coding, rate, {str(k): str(v) for k, v in custom.items()}
    )
