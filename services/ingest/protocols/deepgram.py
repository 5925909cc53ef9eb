"""Deepgram's live API (``GET /v1/listen``), as Deepgram documents it and its SDK types it.

Sans-I/O: ``parse`` reads the query string (a parameter that is not Deepgram's, or a value this
service cannot honour, is refused; Deepgram's features this service does not have are accepted
and listed as ignored); ``Deepgram`` turns binary frames into audio and ``KeepAlive``,
``Finalize``, ``CloseStream`` and ``Configure`` (new keyterms) into the core's inputs, and the
core's events into ``Results``, ``SpeechStarted``, ``UtteranceEnd`` and, after ``CloseStream``,
``Metadata``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from services.catalog import ALIASES, requested_pool
from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, Input, KeepAlive
from services.ingest.protocols import query
from services.ingest.protocols.adapter import Frame, Opened, Reply, json_object
from services.protocol import (
    MAX_CHANNELS,
    SAMPLE_RATES,
    Done,
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

log = logging.getLogger("ingest.deepgram")

# Deepgram closes a stream that has had no audio and no KeepAlive for this long (NET-0001).
IDLE_TIMEOUT_S = 10.0
# Deepgram's own parameters this service honours, and ``token`` (our way of carrying a key).
IMPLEMENTED = (
    "model",
    "encoding",
    "sample_rate",
    "channels",
    "multichannel",
    "interim_results",
    "endpointing",
    "utterance_end_ms",
    "vad_events",
    "keyterm",
    "keywords",
    "language",
    "tag",
    "token",
)
# Honoured as far as a session can be: pauses are the ingest's --silence-ms, the language the pool's.
APPROXIMATED = ("endpointing", "utterance_end_ms", "language")
# The rest of Deepgram's documented live parameters: accepted, and told as ignored.
IGNORED = (
    "callback",
    "callback_method",
    "detect_entities",
    "diarize",
    "diarize_model",
    "dictation",
    "extra",
    "filler_words",
    "language_hint",
    "mip_opt_out",
    "numerals",
    "profanity_filter",
    "punctuate",
    "redact",
    "replace",
    "search",
    "smart_format",
    "version",
)
# Deepgram's model names (what existing code carries): served by the default pool.
DEEPGRAM_MODEL = re.compile(
    r"(nova(-[23])?|enhanced|base)(-[a-z]+)*|meeting|phonecall|finance|conversationalai|voicemail|video|custom"
)
# Languages the Hindi/Hinglish pools answer (Whisper is asked nothing more specific).
LANGUAGE = re.compile(r"(hi|en)([-_][A-Za-z]+)*|multi", re.IGNORECASE)
ARCH = "whisper"


@dataclass(frozen=True)
class Options:
    """What a session's query asks of the Deepgram protocol itself (beyond ``SessionParams``)."""

    channels: int = 1
    interim_results: bool = False
    endpointing: bool = True  # speech_final on a final ended by a pause (off with endpointing=false)
    utterance_end: bool = False  # UtteranceEnd after a final ended by a pause
    vad_events: bool = False  # SpeechStarted
    tag: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()  # kept in the prompt when Configure replaces the keyterms
    keyterms: tuple[str, ...] = ()
    # Asked for and accepted, but served by this service's own settings: told in the log.
    approximated: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # Deepgram parameters given that this service does not act on


def _model(params: query.Query) -> str | None:
    """Our pool names choose a pool; Deepgram's model names are served by the default pool."""
    name = query.last(params, "model")
    return None if not name or DEEPGRAM_MODEL.fullmatch(name) else requested_pool(name)


def prompt(keyterms: tuple[str, ...], keywords: tuple[str, ...]) -> str:
    """``keyterm``s and ``keywords`` as the session's vocabulary (refused when too long)."""
    return check_prompt(", ".join(term.strip() for term in keyterms + keywords if term.strip()))


def parse(string: str) -> tuple[SessionParams, Options]:
    """A ``/v1/listen`` query; raises ProtocolError for anything that cannot be honoured."""
    params = parse_qs(string, keep_blank_values=True)
    unknown = sorted(set(params) - {*IMPLEMENTED, *IGNORED})
    if unknown:
        raise query.bad(f"unknown parameter {unknown[0]!r}")
    rate = query.whole(params, "sample_rate", 16000)
    if rate not in SAMPLE_RATES:
        raise query.bad(f"sample_rate={rate}: one of {', '.join(map(str, SAMPLE_RATES))} Hz")
    channels, multichannel = query.whole(params, "channels", 1), query.boolean(params, "multichannel")
    if not 1 <= channels <= MAX_CHANNELS:
        raise query.bad(f"channels={channels}: 1 to {MAX_CHANNELS}")
    if channels > 1 and not multichannel:
        raise query.bad("channels are transcribed apart, never mixed: add multichannel=true")
    endpointing = query.last(params, "endpointing")
    if endpointing not in ("", "true", "false") and not endpointing.isdigit():
        raise query.bad(f"endpointing={endpointing!r}: milliseconds, or false")
    query.whole(params, "utterance_end_ms", 0)
    language = query.last(params, "language")
    if language and not LANGUAGE.fullmatch(language):
        raise query.bad(f"language={language!r}: this service transcribes Hindi and English (hi, en, multi)")
    keyterms = tuple(params.get("keyterm", []))
    keywords = tuple(word.rpartition(":")[0] or word for word in params.get("keywords", []))  # no :boost
    approximated = [f"{name}={query.last(params, name)}" for name in APPROXIMATED if query.last(params, name)]
    session = SessionParams(
        sample_rate=rate,
        model=_model(params),
        partials=query.boolean(params, "interim_results"),
        encoding=query.encoding(params),
        channels=channels,
        words=True,  # Deepgram's results always carry their words
        prompt=prompt(keyterms, keywords),
    )
    options = Options(
        channels=channels,
        interim_results=session.partials,
        endpointing=endpointing != "false",
        utterance_end="utterance_end_ms" in params,
        vad_events=query.boolean(params, "vad_events"),
        tag=tuple(params.get("tag", [])),
        ignored=tuple(sorted(set(params) & set(IGNORED))),
        keywords=keywords,
        keyterms=keyterms,
        approximated=tuple(approximated),
    )
    return session, options


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def word_json(word: dict[str, Any]) -> dict[str, Any]:
    """One of our words as Deepgram writes it: bare ``word``, ``punctuated_word`` as heard."""
    shown = str(word["word"]).strip()
    bare = re.sub(r"[^\w'-]+", "", shown).lower() or shown.lower()
    times = {"start": round(word["start"], 3), "end": round(word["end"], 3)}
    return {"word": bare, **times, "confidence": round(word["confidence"], 4), "punctuated_word": shown}


def model_uuid(pool: str) -> str:
    """The pool's ``model_uuid``: stable, one per pool, on every route."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pool:{pool}"))


def model_info(pool: str) -> dict[str, str]:
    """What really ran: the pool, the model it serves (when it is one of ours), Whisper."""
    return {"name": pool, "version": ALIASES.get(pool, pool), "arch": ARCH}


class Deepgram:
    """No greeting; ``Results`` and the rest as Deepgram sends them; an ``Error`` before a close."""

    def __init__(self, options: Options, created: str) -> None:
        self.options = options
        self.created = created  # ISO 8601, UTC: when the stream opened
        self.request_id = ""
        self.model = ""
        self.bytes_per_second = 0
        self.received = 0  # bytes of audio
        self.sha256 = hashlib.sha256()
        # Finalize is always answered with a from_finalize result: channels whose speech is open
        # (as the events rendered so far tell) and channels whose Finalize waits for its answer.
        self.keyterms = options.keyterms  # as Configure last set them
        self.speaking: set[int] = set()
        self.finalizing: set[int] = set()

    def idle_timeout(self) -> float | None:
        return IDLE_TIMEOUT_S

    @property
    def model_uuid(self) -> str:
        return model_uuid(self.model)

    def greeting(self, opened: Opened) -> list[Frame]:
        params = opened.params
        self.request_id, self.model = opened.session, opened.model
        self.bytes_per_second = params.sample_rate * params.bytes_per_sample * params.channels
        if self.options.ignored:
            log.info(
                "session %s: Deepgram parameters ignored: %s", opened.session, ", ".join(self.options.ignored)
            )
        if self.options.approximated:
            told = ", ".join(self.options.approximated)
            log.info(
                "session %s: %s accepted; served with this service's pauses and language",
                opened.session,
                told,
            )
        if self.options.tag:
            log.info("session %s: tag %s", opened.session, ", ".join(self.options.tag))
        return []

    def take(self, message: Frame) -> list[Input | Reply]:
        if isinstance(message, bytes):
            self.received += len(message)
            self.sha256.update(message)
            return [Audio(message)]
        control = json_object(message)
        kind = control.get("type")
        if kind == "KeepAlive":
            return [KeepAlive()]
        if kind == "Finalize":
            return [Finalize(), *self._finalize()]
        if kind == "CloseStream":
            return [EndOfAudio()]
        if kind == "Configure":
            return self._configure(control)
        raise ProtocolError(
            "bad_message",
            f"unknown message type {kind!r}; expected KeepAlive, Finalize, CloseStream or Configure",
        )

    def _configure(self, control: dict[str, Any]) -> list[Input | Reply]:
        """New ``keyterms`` (the session's prompt from now on); its ``features`` are ignored."""
        keyterms = control.get("keyterms")
        if keyterms is None:
            keyterms = list(self.keyterms)
        if not isinstance(keyterms, list) or not all(isinstance(term, str) for term in keyterms):
            raise ProtocolError("bad_message", "Configure: keyterms is a list of strings")
        try:
            vocabulary = prompt(tuple(keyterms), self.options.keywords)
        except ProtocolError as error:
            code = "CONFIGURE_KEYTERM_LIMIT_EXCEEDED"
            failure = {"type": "ConfigureFailure", "request_id": self.request_id, "code": code}
            return [Reply(_dump(failure | {"description": error.message}))]
        self.keyterms = tuple(keyterms)
        success = {"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": keyterms}
        return [Configure(vocabulary), Reply(_dump(success))]

    def _finalize(self) -> list[Reply]:
        """A channel with no speech open is answered at once (empty); the others by their final."""
        self.finalizing |= self.speaking
        now = self.received / self.bytes_per_second if self.bytes_per_second else 0.0
        quiet = [c for c in range(self.options.channels) if c not in self.speaking]
        return [Reply(self._results("", c, now, now, 0.0, [], "finalize")) for c in quiet]

    def render(self, event: ServerEvent) -> list[Frame]:
        options = self.options
        if isinstance(event, Partial) and options.interim_results:
            return [self._results(event.text, event.channel, event.start, event.end, 0.0, [], None)]
        if isinstance(event, Final):
            if event.ended == "finalize":
                self.finalizing.discard(event.channel)
            return self._final(event)
        if isinstance(event, SpeechStarted):
            self.speaking.add(event.channel)
        if isinstance(event, SpeechEnded):
            self.speaking.discard(event.channel)
            if event.segment is None and event.channel in self.finalizing:  # Finalize closed noise
                self.finalizing.discard(event.channel)
                return [self._results("", event.channel, event.start, event.end, 0.0, [], "finalize")]
        if isinstance(event, SpeechStarted) and options.vad_events:
            started = {
                "type": "SpeechStarted",
                "channel": self._index(event.channel),
                "timestamp": round(event.at, 3),
            }
            return [_dump(started)]
        if isinstance(event, ErrorEvent):  # one segment's error: the stream goes on
            return [self._error(event.code, event.message)]
        if isinstance(event, Done):
            return [self._metadata()]
        return []

    def refusal(self, error: ProtocolError) -> list[Frame]:
        return [self._error(error.code, error.message)]

    def _final(self, final: Final) -> list[Frame]:
        """Its ``Results``; an ``UtteranceEnd`` after it when asked for and a pause ended it."""
        words = [word_json(word) for word in final.words]
        confidence = final.confidence if final.confidence is not None else 0.0
        results = self._results(
            final.text, final.channel, final.start, final.end, confidence, words, final.ended
        )
        if not (self.options.utterance_end and final.ended == "silence" and not final.silent):
            return [results]
        last = words[-1]["end"] if words else round(final.end, 3)
        return [
            results,
            _dump({"type": "UtteranceEnd", "channel": self._index(final.channel), "last_word_end": last}),
        ]

    def _index(self, channel: int) -> list[int]:
        return [channel, self.options.channels]

    def _results(
        self,
        transcript: str,
        channel: int,
        start: float,
        end: float,
        confidence: float,
        words: list[dict[str, Any]],
        ended: str | None,  # why its segment closed (Final.ended); None: an interim result
    ) -> str:
        message = {
            "type": "Results",
            "channel_index": self._index(channel),
            "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3),
            "is_final": ended is not None,
            "speech_final": ended == "silence" and self.options.endpointing,
            "from_finalize": ended == "finalize",
            "channel": {
                "alternatives": [{"transcript": transcript, "confidence": confidence, "words": words}]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": model_info(self.model),
                "model_uuid": self.model_uuid,
            },
        }
        return _dump(message)

    def _metadata(self) -> str:
        rate = self.bytes_per_second
        warnings = [
            {"parameter": name, "type": "ignored", "message": f"{name} is accepted and has no effect here"}
            for name in self.options.ignored
        ]
        message = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.sha256.hexdigest(),
            "created": self.created,
            "duration": round(self.received / rate, 3) if rate else 0.0,
            "channels": self.options.channels,
            "models": [self.model_uuid],
            "model_info": {self.model_uuid: model_info(self.model)},
            "warnings": warnings,
        }
        return _dump(message)

    def _error(self, code: str, message: str) -> str:
        return _dump({"type": "Error", "variant": code, "description": message})
