"""Every Redis key, stream, group and channel name the services share.

One place, so that ingest and transcriber can never disagree on a name.
"""

from __future__ import annotations

from typing import Any

PREFIX = "stt"
GROUP = "transcribers"


def our_group(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The transcribers' group in an ``XINFO GROUPS`` reply (its name as bytes or text), if any."""
    return next((g for g in groups if g["name"] in (GROUP, GROUP.encode())), None)


def segment_stream(model: str) -> str:
    """The stream of speech segments waiting for the ``model`` pool."""
    return f"{PREFIX}:segments:{model}"


def partials_stream(model: str) -> str:
    """Partial requests for ``model``: served only when no final work waits."""
    return f"{PREFIX}:partials:{model}"


def file_stream(model: str) -> str:
    """Segments of uploaded files for ``model``: their own lane, served only when no live segment
    waits, so a file never holds back a talker."""
    return f"{PREFIX}:files:{model}"


def live_key(model: str) -> str:
    """Set, with a TTL of their ``--file-idle-s``, by every transcriber of ``model`` as it reads a
    live entry (a final or a partial request), and by the ingest while a segment of the pool is
    open (``services.ingest.pipeline.talking``): while it exists someone in the pool is talking,
    and the finals transcribers leave the file lane to the background one."""
    return f"{PREFIX}:live:{model}"


def files_running(model: str) -> str:
    """A sorted set of the files being transcribed by ``model``'s pool now (file id -> the time its
    ingest last said it is still running): bounds the files a pool takes at once, across ingests."""
    return f"{PREFIX}:files-running:{model}"


def dead_letter_stream(model: str) -> str:
    """Segments of ``model`` that could not be transcribed after every attempt."""
    return f"{PREFIX}:dead:{model}"


def alive_key(model: str) -> str:
    """A key with a short TTL that live transcribers of ``model`` keep refreshing."""
    return f"{PREFIX}:alive:{model}"


ALIVE_PATTERN = f"{PREFIX}:alive:*"


def consumer_key(model: str, consumer: str) -> str:
    """Set (to its role, with a short TTL) by every transcriber of ``model`` while it serves:
    its readiness, whatever its role (the alive key only counts those serving finals)."""
    return f"{PREFIX}:consumer:{model}:{consumer}"


def consumer_pattern(model: str) -> str:
    return consumer_key(model, "*")


def result_channel(session: str) -> str:
    """The pub/sub channel that carries one session's results."""
    return f"{PREFIX}:results:{session}"


def call_events(call: str) -> str:
    """A telephony call's events (start, transcripts, dtmf, mark, stop, done), in order: read by a
    CRM with XREAD, or live on the ingest's ``/calls/<call>/events``."""
    return f"{PREFIX}:call:{call}"


def call_live(call: str) -> str:
    """A hash of a call's media streams being served now (stream id -> session), which expires
    unless their ingests keep refreshing it: how a reader of the call's events knows that a call
    whose ``done`` never came will not go on (its ingest died)."""
    return f"{PREFIX}:call-live:{call}"


def control_channel(ingest_id: str) -> str:
    """A channel each ingest holds open so its subscriber connection always exists."""
    return f"{PREFIX}:ingest:{ingest_id}"
