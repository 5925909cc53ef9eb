"""What every wire protocol's frames become for the session core: five inputs, nothing more.

A protocol adapter (``services.ingest.protocols``) turns its own frames into these; the runner
(``services.ingest.pipeline.session``) applies them to the core with ``Channels.apply``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Audio:
    """A frame of audio in the session's encoding and channel layout."""

    data: bytes


@dataclass(frozen=True)
class EndOfAudio:
    """The client has no more audio: what is open is closed, and the session ends once answered."""


@dataclass(frozen=True)
class Finalize:
    """Close the open segment now; its final comes as usual and the session goes on."""


@dataclass(frozen=True)
class Configure:
    """A new prompt (vocabulary) for the segments that close from now on."""

    prompt: str


@dataclass(frozen=True)
class KeepAlive:
    """Nothing to send now; the session stays open (any frame restarts the idle timer)."""


Input = Audio | EndOfAudio | Finalize | Configure | KeepAlive
