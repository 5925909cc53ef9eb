"""Our own protocol (Oriserve's, extended): binary frames of audio, a few JSON controls, JSON
events back. Sans-I/O; the query string is ``services.protocol.parse_query``'s."""

from __future__ import annotations

from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, Input, KeepAlive
from services.ingest.protocols.adapter import Frame, Opened, Reply, json_object
from services.protocol import (
    EagerEnd,
    ErrorEvent,
    Final,
    ProtocolError,
    Ready,
    ServerEvent,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
    check_prompt,
)

CONTROLS: dict[str, Input] = {
    "eof": EndOfAudio(),
    "close_stream": EndOfAudio(),
    "keepalive": KeepAlive(),
    "finalize": Finalize(),
}


def shown(event: ServerEvent, turns: bool = False) -> bool:
    """Whether our protocol has a message for ``event``. Speech starting, eager endpointing's
    guess and a turn resuming after it only when the session asked (``?turns=true``); never the
    end of speech (its final tells) nor a final with nothing said (other protocols tell those)."""
    if isinstance(event, SpeechStarted | EagerEnd | TurnResumed):
        return turns
    if isinstance(event, SpeechEnded):
        return False
    return not (isinstance(event, Final) and event.silent)


def parse_text(text: str) -> Input:
    """A text frame from the client: ``EOF`` or ``{"type": ...}`` (CONTROLS, or ``configure``)."""
    if text.strip() == "EOF":
        return EndOfAudio()
    message = json_object(text)
    kind = message.get("type")
    if kind == "configure":
        prompt = message.get("prompt")
        if not isinstance(prompt, str):
            raise ProtocolError("bad_message", "configure needs a string 'prompt'")
        return Configure(check_prompt(prompt))
    if isinstance(kind, str) and kind in CONTROLS:
        return CONTROLS[kind]
    raise ProtocolError(
        "bad_message",
        f"unknown message type {kind!r}; expected one of {', '.join(CONTROLS)}, configure",
    )


class Native:
    """``ready`` first; every event as its own JSON; ``error`` before a close."""

    def __init__(self, turns: bool = False) -> None:
        self.turns = turns

    def greeting(self, opened: Opened) -> list[Frame]:
        params = opened.params
        layout = (params.encoding, params.channels, params.roles, params.words)
        return [Ready(opened.session, opened.model, params.sample_rate, opened.partials, *layout).to_json()]

    def take(self, message: Frame) -> list[Input | Reply]:
        if isinstance(message, bytes):
            return [Audio(message)]
        return [parse_text(message)]

    def render(self, event: ServerEvent) -> list[Frame]:
        return [event.to_json()] if shown(event, self.turns) else []

    def refusal(self, error: ProtocolError) -> list[Frame]:
        return [ErrorEvent(error.code, error.message).to_json()]

    def idle_timeout(self) -> float | None:
        return None
