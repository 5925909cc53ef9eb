"""Deepgram Flux (``GET /v2/listen``): turns for voice agents, from our eager endpointing.

Sans-I/O. A turn is one of our segments: speech starting is ``StartOfTurn``, each partial an
``Update``, eager endpointing's guess (told while its pause is still being confirmed) an
``EagerEndOfTurn``, speech that goes on after it ``TurnResumed``, the segment's final
``EndOfTurn``; ``turn_index`` counts turns. Flux's state machine holds: ``EagerEndOfTurn`` and
``TurnResumed`` only with ``eager_eot_threshold``, a new turn's events only after the previous
turn's ``EndOfTurn`` (they wait here, bounded by the final's result timeout), and an ``EndOfTurn``
for every turn started (empty when its speech was noise). Our turns end by pause length
(``--silence-ms``), not by a confidence: ``end_of_turn_confidence`` reads 0 while a turn goes on,
``eager_eot_threshold`` at ``EagerEndOfTurn``, 1 at ``EndOfTurn``. ``ForceEndTurn`` closes the turn
now (``Finalize``); ``CloseStream`` ends the audio; ``Configure`` takes new ``keyterms``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs

from services.catalog import requested_pool
from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, Input, KeepAlive
from services.ingest.protocols import deepgram, query
from services.ingest.protocols.adapter import Frame, Opened, Reply, json_object
from services.protocol import (
    SAMPLE_RATES,
    EagerEnd,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    ServerEvent,
    SessionParams,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
    check_prompt,
)

# How each of our segment endings ends a Flux turn (EndOfTurn's ``trigger``).
TRIGGERS = {"silence": "model", "finalize": "manual", "max_length": "model", "eof": "model"}


def _dump(message: dict[str, Any]) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class Flux:
    def __init__(self, eager_threshold: float | None, thresholds: dict[str, float | int]) -> None:
        self.request_id = str(uuid.uuid4())
        self.eager_threshold = eager_threshold  # None: no EagerEndOfTurn / TurnResumed
        self.thresholds = thresholds  # as the client set them, echoed by ConfigureSuccess
        self.keyterms: list[str] = []
        self._sequence = 0
        self._turn = 0
        self._open = False  # StartOfTurn was sent and its EndOfTurn not yet
        self._awaiting: int | None = None  # the segment whose final ends the open turn
        self._held: list[ServerEvent] = []  # the next turn's events, until this one ends
        self._window = (0.0, 0.0)
        self._transcript = ""

    def greeting(self, opened: Opened) -> list[Frame]:
        return [self._message({"type": "Connected", "request_id": self.request_id})]

    def idle_timeout(self) -> float | None:
        return deepgram.IDLE_TIMEOUT_S  # as Deepgram's live API

    def take(self, message: Frame) -> list[Input | Reply]:
        if isinstance(message, bytes):
            return [Audio(message)]
        control = json_object(message)
        kind = control.get("type")
        if kind == "CloseStream":
            return [EndOfAudio()]
        if kind == "ForceEndTurn":
            return [Finalize()]
        if kind == "KeepAlive":
            return [KeepAlive()]
        if kind == "Configure":
            return self._configure(control)
        raise ProtocolError(
            "bad_message", f"unknown message type {kind!r}; expected CloseStream, ForceEndTurn, Configure"
        )

    def _configure(self, control: dict[str, Any]) -> list[Input | Reply]:
        thresholds = control.get("thresholds") or {}
        keyterms = control.get("keyterms", self.keyterms)
        listed = isinstance(keyterms, list) and all(isinstance(k, str) for k in keyterms)
        if not isinstance(thresholds, dict) or not listed:
            raise ProtocolError(
                "bad_message", "Configure: thresholds is an object, keyterms a list of strings"
            )
        self.thresholds |= {k: v for k, v in thresholds.items() if k in THRESHOLDS}
        if "eager_eot_threshold" in thresholds:
            self.eager_threshold = float(thresholds["eager_eot_threshold"])
        self.keyterms = list(keyterms)
        success = {"type": "ConfigureSuccess", "request_id": self.request_id, "thresholds": self.thresholds}
        reply = Reply(self._message(success | {"keyterms": self.keyterms}))
        return [Configure(check_prompt(", ".join(self.keyterms))), reply]

    def render(self, event: ServerEvent) -> list[Frame]:
        if self._awaiting is not None and isinstance(event, NEXT_TURN):
            self._held.append(event)  # the next turn's, after this one's EndOfTurn
            return []
        frames = self._render(event)
        if self._awaiting is None and self._held:
            held, self._held = self._held, []
            frames += [frame for e in held for frame in self.render(e)]
        return frames

    def _render(self, event: ServerEvent) -> list[Frame]:
        if isinstance(event, SpeechStarted):
            self._open, self._window, self._transcript = True, (event.at, event.at), ""
            return [self._turn_info("StartOfTurn", 0.0)]
        if not self._open:
            return []
        if isinstance(event, Partial):
            self._window, self._transcript = (event.start, event.end), event.text
            return [self._turn_info("Update", 0.0)]
        if isinstance(event, EagerEnd) and self.eager_threshold is not None:
            self._window, self._transcript = (event.start, event.end), event.text
            return [self._turn_info("EagerEndOfTurn", self.eager_threshold)]
        if isinstance(event, TurnResumed) and self.eager_threshold is not None:
            return [self._turn_info("TurnResumed", 0.0)]
        if isinstance(event, SpeechEnded):
            if event.segment is not None:
                self._awaiting = event.segment
                return []
            return self._end_turn("", (event.start, event.end), "model")  # noise: the turn ends empty
        if isinstance(event, Final) and event.segment == self._awaiting:
            self._awaiting = None
            return self._end_turn(
                event.text, (event.start, event.end), TRIGGERS.get(event.ended, "model"), event
            )
        if isinstance(event, ErrorEvent) and event.segment == self._awaiting:
            self._awaiting = None  # its transcript was lost: the turn ends empty
            return self._end_turn("", self._window, "model")
        return []

    def _end_turn(
        self, text: str, window: tuple[float, float], trigger: str, final: Final | None = None
    ) -> list[Frame]:
        self._window, self._transcript = window, text
        frame = self._turn_info("EndOfTurn", 1.0, trigger, final)
        self._open = False
        self._turn += 1
        return [frame]

    def _turn_info(
        self, event: str, confidence: float, trigger: str | None = None, final: Final | None = None
    ) -> str:
        info: dict[str, Any] = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "event": event,
            "turn_index": self._turn,
            "audio_window_start": round(self._window[0], 3),
            "audio_window_end": round(self._window[1], 3),
            "transcript": self._transcript,
            "words": _words(self._transcript, final),
            "end_of_turn_confidence": confidence,
        }
        if trigger is not None:
            info["trigger"] = trigger
        return self._message(info)

    def _message(self, body: dict[str, Any]) -> str:
        message = _dump(body | {"sequence_id": self._sequence})
        self._sequence += 1
        return message

    def refusal(self, error: ProtocolError) -> list[Frame]:
        return [self._message({"type": "Error", "code": error.code.upper(), "description": error.message})]


THRESHOLDS = ("eager_eot_threshold", "eot_threshold", "eot_timeout_ms")
# Flux's models, served by the default pool (our pool names choose a pool).
FLUX_MODELS = ("flux-general-en", "flux-general-multi")
# Flux's other documented parameters: accepted; they change nothing here.
IGNORED = ("language_hint", "profanity_filter", "numerals", "redact", "mip_opt_out", "tag")
# Events of a turn that can only be the next one while a turn awaits its final.
NEXT_TURN = (SpeechStarted, Partial, EagerEnd, TurnResumed, SpeechEnded)


def parse(text: str) -> tuple[SessionParams, Flux]:
    """A ``/v2/listen`` query; raises ProtocolError for anything that cannot be honoured."""
    params = parse_qs(text, keep_blank_values=True)
    unknown = sorted(
        set(params) - {"model", "encoding", "sample_rate", "keyterm", "token", *THRESHOLDS, *IGNORED}
    )
    if unknown:
        raise query.bad(f"unknown parameter {unknown[0]!r}")
    model = params.get("model", [""])[-1].strip()
    if not model:
        raise query.bad(f"model is required: {' or '.join(FLUX_MODELS)}, or a pool's name")
    rate = query.whole(params, "sample_rate", 16000)
    if rate not in SAMPLE_RATES:
        raise query.bad(f"sample_rate={rate}: one of {', '.join(map(str, SAMPLE_RATES))} Hz")
    eager = query.number(params, "eager_eot_threshold", 0.3, 0.9)
    thresholds: dict[str, float | int] = {
        "eot_threshold": query.number(params, "eot_threshold", 0.5, 0.9) or 0.7
    }
    thresholds["eot_timeout_ms"] = query.whole(params, "eot_timeout_ms", 5000)
    if eager is not None:
        thresholds["eager_eot_threshold"] = eager
    flux = Flux(eager, thresholds)
    flux.keyterms = [term.strip() for term in params.get("keyterm", []) if term.strip()]
    session = SessionParams(
        sample_rate=rate,
        model=None if model in FLUX_MODELS else requested_pool(model),
        partials=True,  # Update messages
        encoding=query.encoding(params),
        prompt=check_prompt(", ".join(flux.keyterms)),
    )
    return session, flux


def _words(transcript: str, final: Final | None) -> list[dict[str, Any]]:
    """The turn's words: timed ones where the final has them (``words=true`` backends), else the
    transcript's words with the segment's confidence (1 when the backend gives none)."""
    if final is not None and final.words:
        return [
            {"word": w["word"], "confidence": w["confidence"], "start": w["start"], "end": w["end"]}
            for w in final.words
        ]
    confidence = final.confidence if final is not None and final.confidence is not None else 1.0
    return [{"word": word, "confidence": confidence} for word in transcript.split()]
