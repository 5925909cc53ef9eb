"""OpenAI's ``POST /v1/audio/transcriptions``, pure: the form's fields in, the response out.

``parse`` reads the form fields (the handler takes the ``file`` part): ``model`` (OpenAI's names
are the default pool, our pool names and aliases choose that pool), ``language`` (hi or en),
``prompt`` and ``keywords[]`` (the model's prompt), ``response_format``, ``timestamp_granularities[]``,
``stream``; ``temperature``, ``include[]``, ``chunking_strategy``, ``languages[]`` and
``known_speaker_*[]`` are accepted and ignored. List fields come as the openai SDK sends them in
multipart (``name[]``, one part per value) or bare (``name``); an object comes as its
``name[key]`` parts. Anything else is refused, as OpenAI refuses it, with an ``OpenAIError``.

``render`` gives the body of each ``response_format``; with ``stream`` (json or text only; with
srt, vtt and verbose_json it is ignored, as OpenAI ignores it for whisper-1) the handler sends
``delta`` per final and ``done`` at the end instead, as server-sent events. A delta carries two
fields OpenAI's do not, ``start`` and ``end`` (the segment's seconds in the file), and its words
(``words``: ``word``, ``start``, ``end``) when ``timestamp_granularities[]=word`` was asked; the
``done`` event carries ``duration`` (seconds of audio) and no ``usage`` (OpenAI types that one as
token counts, which Whisper's pools do not report).

verbose_json's segments carry what a ``Final`` knows: ``avg_logprob`` is the log of its
confidence (the mean of its words' probabilities) when its words were timed, else 0.0;
``compression_ratio`` is Whisper's (the text's length over its zlib-compressed length);
``no_speech_prob`` is 0.0 (a final is speech: noise and hallucinations are dropped before it);
``tokens`` is empty, ``temperature`` 0.0, ``seek`` the start in Whisper's 10 ms frames.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.catalog import requested_pool
from services.ingest.protocols.files import FileInfo, spoken, subtitles, transcript
from services.protocol import Final, ProtocolError, SessionParams, check_prompt

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAMED = ("json", "text")  # the formats a stream replaces; the others are sent whole
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
STREAM_CONTENT_TYPE = "text/event-stream"
GRANULARITIES = ("word", "segment")
LANGUAGES = {"hi": "hindi", "en": "english"}  # what the pools transcribe, and verbose_json's names
SINGLE = ("model", "language", "prompt", "response_format", "temperature", "stream", "chunking_strategy")
LISTS = ("timestamp_granularities", "include", "keywords", "languages")
LISTS_IGNORED = ("known_speaker_names", "known_speaker_references")  # gpt-4o-transcribe-diarize's
IGNORED = ("temperature", "include", "chunking_strategy", "languages", *LISTS_IGNORED)
MAX_VALUES = 256  # form values in all, the file aside


@dataclass(eq=False)
class OpenAIError(Exception):
    """A request OpenAI's servers would refuse: its status and OpenAI's error object."""

    message: str
    status: int = 400  # 400, 401, 413, 429 ...
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"

    def __str__(self) -> str:
        return self.message


def error_body(error: OpenAIError) -> dict[str, Any]:
    """OpenAI's body for a refused request."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


@dataclass(frozen=True)
class TranscriptionRequest:
    """What the form asks for."""

    params: SessionParams  # the pool (model), the prompt, and words when word timestamps are asked
    model: str  # as the client named it
    response_format: str = "json"
    stream: bool = False  # send server-sent events (asked, and the format is json or text)
    language: str | None = None  # hi or en, when given
    words: bool = False  # verbose_json's words (or each delta's), timestamp_granularities[]=word
    segments: bool = True  # verbose_json's segments: asked for, or no granularity given
    ignored: tuple[str, ...] = ()  # fields given that change nothing here


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(message, param=param, code=code)


def _fields(form: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The fields by their bare names: ``x[]`` is ``x``, an object's ``x[key]`` parts are ``x``."""
    fields: dict[str, list[str]] = {}
    if sum(len(values) for values in form.values()) > MAX_VALUES:
        raise _invalid(f"more than {MAX_VALUES} form values", None, "too_many_fields")
    for name, values in form.items():
        bare = name.removesuffix("[]")
        if bare.startswith("chunking_strategy["):
            bare = "chunking_strategy"
        if bare not in (*SINGLE, *LISTS, *LISTS_IGNORED):
            raise _invalid(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
        fields.setdefault(bare, []).extend(values)
    return fields


def _last(fields: dict[str, list[str]], name: str) -> str:
    return fields.get(name, [""])[-1].strip()


def _model(name: str, pools: Collection[str]) -> str | None:
    """OpenAI's model names are served by the default pool (None); ours choose that pool."""
    if not name:
        raise _invalid("you must provide a model parameter", "model", "missing_required_parameter")
    if name.startswith("gpt-") or name == "whisper-1":
        return None
    pool = requested_pool(name)
    if pool not in pools:
        known = ", ".join(["whisper-1", "gpt-4o-transcribe", *sorted(pools)])
        raise _invalid(f"model {name!r} is not served here; one of {known}", "model", "model_not_found")
    return pool


def _choices(fields: dict[str, list[str]], name: str, allowed: Sequence[str]) -> tuple[str, ...]:
    values = tuple(value.strip() for value in fields.get(name, []))
    for value in values:
        if value not in allowed:
            raise _invalid(f"{name}: {value!r} is not one of {', '.join(allowed)}", f"{name}[]")
    return values


def _prompt(fields: dict[str, list[str]]) -> str:
    parts = [_last(fields, "prompt"), *(word.strip() for word in fields.get("keywords", []))]
    try:
        return check_prompt(", ".join(part for part in parts if part))
    except ProtocolError as error:
        raise _invalid(f"prompt and keywords: {error.message}", "prompt") from None


def _check_ignored(fields: dict[str, list[str]]) -> None:
    temperature = _last(fields, "temperature")
    if temperature:
        try:
            value = float(temperature)
        except ValueError:
            raise _invalid(f"temperature {temperature!r} is not a number", "temperature") from None
        if not 0.0 <= value <= 1.0:
            raise _invalid(f"temperature {temperature}: between 0 and 1", "temperature")
    _choices(fields, "include", ("logprobs",))
    for language in fields.get("languages", []):
        _language(language, "languages[]")


def _language(given: str, param: str) -> str:
    language = given.strip().lower()
    if language not in LANGUAGES:
        raise _invalid(
            f"language {given!r}: this service transcribes Hindi and English ({', '.join(LANGUAGES)})", param
        )
    return language


def parse(form: Mapping[str, Sequence[str]], pools: Collection[str]) -> TranscriptionRequest:
    """The form's fields (``pools``: the pool names this ingest serves); OpenAIError when refused."""
    fields = _fields(form)
    model = _last(fields, "model")
    pool = _model(model, pools)
    language = _language(_last(fields, "language"), "language") if _last(fields, "language") else None
    response_format = _last(fields, "response_format") or "json"
    if response_format == "diarized_json":
        raise _invalid(
            "diarized_json: this service does not tell speakers apart; send each speaker's channel "
            "on its own (Deepgram's /v1/listen?multichannel=true) or use json, text, srt, vtt, verbose_json",
            "response_format",
        )
    if response_format not in FORMATS:
        raise _invalid(f"response_format {response_format!r}: one of {', '.join(FORMATS)}", "response_format")
    stream = _last(fields, "stream").lower()
    if stream not in ("", "true", "false"):
        raise _invalid(f"stream {stream!r}: true or false", "stream")
    streamed = stream == "true" and response_format in STREAMED
    granularities = _choices(fields, "timestamp_granularities", GRANULARITIES)
    if granularities and response_format != "verbose_json" and not streamed:
        raise _invalid(
            "timestamp_granularities needs response_format verbose_json (or stream=true, whose "
            "deltas then carry the words)",
            "timestamp_granularities[]",
        )
    _check_ignored(fields)
    words = "word" in granularities
    return TranscriptionRequest(
        params=SessionParams(model=pool, words=words, prompt=_prompt(fields)),
        model=model,
        response_format=response_format,
        stream=streamed,
        language=language,
        words=words,
        segments="segment" in granularities or not granularities,
        ignored=tuple(name for name in IGNORED if name in fields),
    )


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def _usage(info: FileInfo) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(info.duration)}


def _words(final: Final) -> list[dict[str, Any]]:
    return [
        {"word": str(w["word"]).strip(), "start": round(w["start"], 3), "end": round(w["end"], 3)}
        for w in final.words
    ]


def _segment(number: int, final: Final) -> dict[str, Any]:
    text = final.text.strip()
    encoded = text.encode()
    confidence = final.confidence or 0.0
    return {
        "id": number,
        "seek": int(final.start * 100),
        "start": round(final.start, 3),
        "end": round(final.end, 3),
        "text": f" {text}",  # as Whisper writes them: the texts of segments add up to the text
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": round(math.log(confidence), 4) if confidence > 0 else 0.0,
        "compression_ratio": round(len(encoded) / len(zlib.compress(encoded)), 4),
        "no_speech_prob": 0.0,
    }


def _language_name(code: str | None) -> str:
    """verbose_json's ``language``, a name as Whisper's; not known: this service's speech (Hindi,
    and Hinglish written in Latin letters)."""
    return "hindi" if code is None else LANGUAGES.get(code.lower(), code.lower())


def _verbose(request: TranscriptionRequest, info: FileInfo, finals: Sequence[Final]) -> dict[str, Any]:
    kept = spoken(finals)
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": _language_name(info.language),
        "duration": round(info.duration, 3),
        "text": transcript(kept),
    }
    if request.segments:
        body["segments"] = [_segment(number, final) for number, final in enumerate(kept)]
    if request.words:
        body["words"] = [word for final in kept for word in _words(final)]
    return body | {"usage": _usage(info)}


def render(request: TranscriptionRequest, info: FileInfo, finals: Sequence[Final]) -> tuple[str, bytes]:
    """The content type and body of the response in ``request.response_format``."""
    kind = request.response_format
    if kind == "json":
        body = _dump({"text": transcript(finals), "usage": _usage(info)})
    elif kind == "verbose_json":
        body = _dump(_verbose(request, info, finals))
    elif kind == "text":
        body = (transcript(finals) + "\n").encode()
    else:
        body = subtitles(finals, kind).encode()
    return CONTENT_TYPES[kind], body


def _event(message: dict[str, Any]) -> bytes:
    return b"data: " + _dump(message) + b"\n\n"


def delta(final: Final) -> bytes:
    """A final's ``transcript.text.delta`` event (its text and a space; ``start``, ``end`` and,
    when its words were timed, ``words``); nothing for a final without text."""
    text = final.text.strip()
    if not text:
        return b""
    message: dict[str, Any] = {
        "type": "transcript.text.delta",
        "delta": f"{text} ",
        "start": round(final.start, 3),
        "end": round(final.end, 3),
    }
    if final.words:
        message["words"] = _words(final)
    return _event(message)


def done(info: FileInfo, finals: Sequence[Final]) -> bytes:
    """The ``transcript.text.done`` event that ends a stream: the whole text, in time order."""
    text = transcript(finals)
    return _event({"type": "transcript.text.done", "text": text, "duration": round(info.duration, 3)})


def error_event(error: OpenAIError) -> bytes:
    """A failure after the stream began: the openai SDK raises it as an ``APIError``."""
    return _event(error_body(error))
