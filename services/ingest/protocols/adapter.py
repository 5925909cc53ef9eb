"""What a wire protocol's adapter is: the shape every protocol in this folder has.

An adapter is sans-I/O: ``take`` turns one frame from the client into the session core's inputs
(``services.ingest.core.inputs``), ``render`` turns one of the core's events into the frames its
protocol sends for it (none, for an event the protocol has no message for), ``greeting`` is what
it sends once the session opens and ``refusal`` what it sends before closing on an error. The
runner (``services.ingest.pipeline.session``) owns the socket; the adapter never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.ingest.core.inputs import Input
from services.protocol import ProtocolError, ServerEvent, SessionParams

Frame = str | bytes


@dataclass(frozen=True)
class Opened:
    """The session as it opened: what a protocol's greeting may tell the client."""

    session: str
    model: str
    params: SessionParams
    partials: bool  # partial results will be sent (asked for, and not turned off by the server)


class Adapter(Protocol):
    def greeting(self, opened: Opened) -> list[Frame]: ...

    def take(self, message: Frame) -> list[Input]: ...

    def render(self, event: ServerEvent) -> list[Frame]: ...

    def refusal(self, error: ProtocolError) -> list[Frame]: ...
