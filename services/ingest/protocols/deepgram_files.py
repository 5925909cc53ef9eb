"""Deepgram's pre-recorded API (``POST /v1/listen`` with the audio as the body), pure.

``parse`` reads the query: the live route's parameters, read by the live parser
(``deepgram.parse``), and those only a file has. Implemented for files: ``utterances`` (one per
final), ``paragraphs`` (one per final), ``detect_language`` (the language the file was
transcribed as), ``tag`` and ``extra`` (echoed in the metadata). ``utt_split`` is accepted and
approximated: utterances end at our VAD's pauses. ``encoding``, ``sample_rate`` and ``channels``
describe raw (headerless) audio only and are kept for the handler. The live-only parameters
(``interim_results``, ``endpointing``, ``utterance_end_ms``, ``vad_events``, ``no_delay``) and
Deepgram's features this service does not have are accepted and listed as ignored.
``callback`` is refused: this service calls nothing outside, and so is a JSON body naming a
``url`` (``URL_REFUSED``).

``response`` is Deepgram's JSON for the file's finals; ``error_body`` and ``error_headers`` are
its refusal (HTTP 400), as the live route's handshake refusal has them.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from services.ingest.protocols import deepgram, query
from services.ingest.protocols.files import FileInfo, spoken, transcript
from services.protocol import Final, SessionParams

# Pre-recorded parameters this service acts on (the live ones are deepgram.IMPLEMENTED).
IMPLEMENTED = ("utterances", "paragraphs", "detect_language", "extra")
APPROXIMATED = ("utt_split",)  # utterances end at our VAD's pauses (the ingest's --silence-ms)
# Deepgram's documented pre-recorded features this service does not have: accepted, told as ignored.
IGNORED = (
    "summarize",
    "sentiment",
    "topics",
    "custom_topic",
    "custom_topic_mode",
    "intents",
    "custom_intent",
    "custom_intent_mode",
    "measurements",
)
# Streaming's own parameters: nothing to do for a file, accepted and told as ignored.
LIVE_ONLY = ("interim_results", "endpointing", "utterance_end_ms", "vad_events", "no_delay")
CALLBACK_REFUSED = (
    "callback: this service calls nothing outside; leave callback out and the transcript "
    "is the response to this request"
)
URL_REFUSED = "this service fetches nothing from outside: send the audio itself as the request body"
UTT_SPLIT_MAX_S = 60.0
MAX_EXTRA = 32  # extra=key:value pairs echoed in the metadata


@dataclass(frozen=True)
class DeepgramFileOptions:
    """What a pre-recorded query asks beyond ``SessionParams``."""

    multichannel: bool = False  # one result channel per audio channel (else one for the file)
    # Raw (headerless) audio only: as given (None: not given); a file with a header says its own.
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    utterances: bool = False
    paragraphs: bool = False
    detect_language: bool = False
    tag: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    approximated: tuple[str, ...] = ()  # name=value: accepted, served by this service's settings
    ignored: tuple[str, ...] = ()  # Deepgram parameters given that this service does not act on


def parse(string: str) -> tuple[SessionParams, DeepgramFileOptions]:
    """A pre-recorded ``/v1/listen`` query; raises ProtocolError for anything that cannot be honoured."""
    params = parse_qs(string, keep_blank_values=True)
    if "callback" in params:
        raise query.bad(CALLBACK_REFUSED)
    own = {*IMPLEMENTED, *APPROXIMATED, *IGNORED, *LIVE_ONLY}
    # The live parser reads the rest: its unknown parameters are unknown here too.
    live_query = urlencode([(k, v) for k, values in params.items() if k not in own for v in values])
    session, live = deepgram.parse(live_query)
    if "encoding" in params and "sample_rate" not in params:
        raise query.bad("encoding is for raw audio, which needs its sample_rate too")
    query.number(params, "utt_split", 0.0, UTT_SPLIT_MAX_S)
    approximated = [f"{name}={query.last(params, name)}" for name in APPROXIMATED if query.last(params, name)]
    ignored = (set(params) & {*IGNORED, *LIVE_ONLY}) | set(live.ignored)
    options = DeepgramFileOptions(
        multichannel=query.boolean(params, "multichannel"),
        encoding=session.encoding if "encoding" in params else None,
        sample_rate=session.sample_rate if "sample_rate" in params else None,
        channels=session.channels if "channels" in params else None,
        utterances=query.boolean(params, "utterances"),
        paragraphs=query.boolean(params, "paragraphs"),
        detect_language=query.boolean(params, "detect_language"),
        tag=live.tag,
        extra=_extra(params.get("extra", [])),
        approximated=(*live.approximated, *approximated),
        ignored=tuple(sorted(ignored)),
    )
    return session, options


def _extra(values: list[str]) -> tuple[tuple[str, str], ...]:
    if len(values) > MAX_EXTRA:
        raise query.bad(f"{len(values)} extra parameters; at most {MAX_EXTRA}")
    pairs = []
    for value in values:
        key, colon, text = value.partition(":")
        if not colon or not key.strip():
            raise query.bad(f"extra={value!r}: expected key:value")
        pairs.append((key.strip(), text.strip()))
    return tuple(pairs)


def error_body(message: str, request_id: str) -> dict[str, str]:
    """Deepgram's body for a refused request (HTTP 400)."""
    return {"err_code": "Bad Request", "err_msg": message, "request_id": request_id}


def error_headers(message: str, request_id: str) -> dict[str, str]:
    """Deepgram's headers for a refused request: the reason (ASCII) and the request's id."""
    return {"dg-error": message.encode("ascii", "replace").decode(), "dg-request-id": request_id}


def _confidence(finals: Sequence[Final]) -> float:
    known = [f.confidence for f in finals if f.confidence is not None]
    return round(math.fsum(known) / len(known), 4) if known else 0.0


def _words(finals: Sequence[Final]) -> list[dict[str, Any]]:
    return [deepgram.word_json(word) for final in finals for word in final.words]


def _paragraphs(finals: Sequence[Final]) -> dict[str, Any]:
    """One paragraph of one sentence per final: our segments end at pauses, not at sentences."""
    paragraphs = [
        {
            "sentences": [{"text": f.text.strip(), "start": round(f.start, 3), "end": round(f.end, 3)}],
            "num_words": len(f.words) or len(f.text.split()),
            "start": round(f.start, 3),
            "end": round(f.end, 3),
        }
        for f in finals
    ]
    return {"transcript": "".join(f"\n{f.text.strip()}\n" for f in finals), "paragraphs": paragraphs}


def _channel(info: FileInfo, options: DeepgramFileOptions, finals: Sequence[Final]) -> dict[str, Any]:
    alternative: dict[str, Any] = {
        "transcript": transcript(finals),
        "confidence": _confidence(finals),
        "words": _words(finals),
    }
    if options.paragraphs:
        alternative["paragraphs"] = _paragraphs(finals)
    channel: dict[str, Any] = {"alternatives": [alternative]}
    if options.detect_language and info.language is not None:
        channel["detected_language"] = info.language
    return channel


def _utterance(info: FileInfo, final: Final) -> dict[str, Any]:
    return {
        "start": round(final.start, 3),
        "end": round(final.end, 3),
        "confidence": final.confidence if final.confidence is not None else 0.0,
        "channel": final.channel,
        "transcript": final.text.strip(),
        "words": [deepgram.word_json(word) for word in final.words],
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{info.request_id}:{final.channel}:{final.segment}")),
    }


def response(info: FileInfo, options: DeepgramFileOptions, finals: Sequence[Final]) -> dict[str, Any]:
    """Deepgram's pre-recorded response: with ``multichannel``, one result channel per audio
    channel (``info.channels``), each of that channel's finals; without, one of all finals."""
    model_uuid = deepgram.model_uuid(info.model)
    metadata: dict[str, Any] = {
        "transaction_key": "deprecated",
        "request_id": info.request_id,
        "sha256": info.sha256,
        "created": info.created,
        "duration": round(info.duration, 3),
        "channels": info.channels,
        "models": [model_uuid],
        "model_info": {model_uuid: deepgram.model_info(info.model)},
        "warnings": [
            {"parameter": name, "type": "ignored", "message": f"{name} is accepted and has no effect here"}
            for name in options.ignored
        ],
    }
    if options.tag:
        metadata["tags"] = list(options.tag)
    if options.extra:
        metadata["extra"] = dict(options.extra)
    if options.multichannel:
        channels = [spoken(finals, channel) for channel in range(info.channels)]
    else:
        channels = [spoken(finals)]
    results: dict[str, Any] = {"channels": [_channel(info, options, kept) for kept in channels]}
    if options.utterances:
        results["utterances"] = [_utterance(info, final) for final in spoken(finals)]
    return {"metadata": metadata, "results": results}
