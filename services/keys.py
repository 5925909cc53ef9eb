"""Every Redis key, stream, group and channel name the services share.

One place, so that ingest and transcriber can never disagree on a name.
"""

from __future__ import annotations

import os

PREFIX = "stt"
GROUP = "transcribers"

# Short names users pass as ``?model=`` and the Hub ids they stand for.
ALIASES: dict[str, str] = {
    "swift": "Oriserve/Whisper-Hindi2Hinglish-Swift",
    "prime": "Oriserve/Whisper-Hindi2Hinglish-Prime",
}


def model_name(model: str) -> str:
    """The pool name a model id, alias or local directory is served under.

    ``Oriserve/Whisper-Hindi2Hinglish-Swift`` and ``swift`` are both ``swift``;
    a local directory ``models/whisper-base/`` is ``whisper-base``; any other Hub
    id keeps its full ``owner/name`` form.
    """
    model = model.strip()
    for alias, hub_id in ALIASES.items():
        if model.lower() in (alias, hub_id.lower()):
            return alias
    if os.path.isdir(model):
        return os.path.basename(os.path.normpath(model))
    return model


def segment_stream(model: str) -> str:
    """The stream of speech segments waiting for the ``model`` pool."""
    return f"{PREFIX}:segments:{model}"


def interim_stream(model: str) -> str:
    """Interim (partial) requests for ``model``: served only when no final work waits."""
    return f"{PREFIX}:interim:{model}"


def dead_letter_stream(model: str) -> str:
    """Segments of ``model`` that could not be transcribed after every attempt."""
    return f"{PREFIX}:dead:{model}"


def alive_key(model: str) -> str:
    """A key with a short TTL that live transcribers of ``model`` keep refreshing."""
    return f"{PREFIX}:alive:{model}"


ALIVE_PATTERN = f"{PREFIX}:alive:*"


def result_channel(session: str) -> str:
    """The pub/sub channel that carries one session's results."""
    return f"{PREFIX}:results:{session}"


def control_channel(ingest_id: str) -> str:
    """A channel each ingest holds open so its subscriber connection always exists."""
    return f"{PREFIX}:ingest:{ingest_id}"
