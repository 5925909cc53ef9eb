"""What a wire protocol's adapter is: the shape every protocol in this folder has.

An adapter is sans-I/O. ``take`` turns one frame from the client into the session core's inputs
(``services.ingest.core.inputs``) and any ``Reply`` its protocol answers that frame with at once
(an acknowledgement of new settings, an error the session survives). ``render`` turns one of the
core's events into the frames its protocol sends for it (none, for an event it has no message
for); ``greeting`` is what it sends once the session opens, ``refusal`` what it sends before
closing on an error. The runner (``services.ingest.pipeline.session``) owns the socket; the
adapter never sees it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from services.ingest.core.inputs import Input
from services.protocol import ProtocolError, ServerEvent, SessionParams

Frame = str | bytes


def json_object(text: str) -> dict[str, Any]:
    """A text frame as the JSON object a control message is; ``bad_message`` when it is not one."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # nested too deep: RecursionError, not ValueError
        raise ProtocolError("bad_message", f"text frame is not JSON: {text[:60]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "text frame must be a JSON object")
    return message


@dataclass(frozen=True)
class Reply:
    """A frame the protocol answers a client's frame with, sent at once."""

    frame: Frame


@dataclass(frozen=True)
class Opened:
    """The session as it opened: what a protocol's greeting may tell the client."""

    session: str
    model: str
    params: SessionParams
    partials: bool  # partial results will be sent (asked for, and not turned off by the server)


class Adapter(Protocol):
    def greeting(self, opened: Opened) -> list[Frame]: ...

    def take(self, message: Frame) -> list[Input | Reply]: ...

    def render(self, event: ServerEvent) -> list[Frame]: ...

    def refusal(self, error: ProtocolError) -> list[Frame]: ...

    def idle_timeout(self) -> float | None:
        """Seconds without a frame after which the protocol's own servers close the stream;
        None: the ingest's ``--idle-timeout``."""
        ...
