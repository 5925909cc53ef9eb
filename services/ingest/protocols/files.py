"""What the file routes (Deepgram's ``POST /v1/listen``, OpenAI's ``POST /v1/audio/transcriptions``)
share, pure: the facts of one transcribed upload, and its finals read back as one transcript.

The handler decodes the upload, cuts it into segments with our VAD, collects the ``Final`` of each
segment and hands them here with a ``FileInfo``; ``deepgram_files`` and ``openai_files`` render
them. A final with no text (noise, a known hallucination) is no part of any transcript.

SubRip and WebVTT are written here, not by ``clients/subtitles.py``: the serving image ships
``services/`` alone. Both write the same cues (``tests/test_file_protocols.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.protocol import Final

SUBTITLES = ("srt", "vtt")


@dataclass(frozen=True)
class FileInfo:
    """One upload as it was transcribed."""

    request_id: str  # a UUID: the response's, and the handler's log lines'
    created: str  # when the request came, ISO 8601 UTC with a Z (``iso_utc``)
    duration: float  # seconds of audio
    channels: int  # audio channels of the upload
    sha256: str  # hex digest of the uploaded bytes
    model: str  # the pool that transcribed it
    language: str | None = None  # ISO 639-1 code of what it was transcribed as; None: not known


def iso_utc(now: datetime) -> str:
    """``2026-12-01T09:30:00.123Z``: as the live Deepgram route writes ``created``."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def spoken(finals: Sequence[Final], channel: int | None = None) -> list[Final]:
    """The finals with text (of ``channel``; of all channels when None), in time order."""
    kept = [f for f in finals if f.text.strip() and (channel is None or f.channel == channel)]
    return sorted(kept, key=lambda f: (f.start, f.channel, f.segment))


def transcript(finals: Sequence[Final], channel: int | None = None) -> str:
    """The finals' texts (of ``channel``, or all) joined by spaces, in time order."""
    return " ".join(f.text.strip() for f in spoken(finals, channel))


def timestamp(seconds: float, separator: str) -> str:
    """``HH:MM:SS,mmm`` (SubRip: ``,``) or ``HH:MM:SS.mmm`` (WebVTT: ``.``)."""
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def subtitles(finals: Sequence[Final], kind: str) -> str:
    """The finals as SubRip (``srt``) or WebVTT (``vtt``) cues, one per final, in time order. With
    several channels (or named roles) each cue names its speaker, by role or ``channel N``: a
    ``who:`` prefix in SubRip, a ``<v who>`` voice tag in WebVTT."""
    if kind not in SUBTITLES:
        raise ValueError(f"unknown subtitle format {kind!r}; one of {', '.join(SUBTITLES)}")
    cues = spoken(finals)
    several = len({f.channel for f in cues}) > 1 or any(f.role is not None for f in cues)
    blocks = []
    for number, final in enumerate(cues, 1):
        text = final.text.strip()
        if several:
            who = final.role if final.role is not None else f"channel {final.channel}"
            text = f"{who}: {text}" if kind == "srt" else f"<v {who}>{text}"
        separator = "," if kind == "srt" else "."
        times = f"{timestamp(final.start, separator)} --> {timestamp(final.end, separator)}"
        blocks.append(f"{number}\n{times}\n{text}\n" if kind == "srt" else f"{times}\n{text}\n")
    return "\n".join(blocks) if kind == "srt" else "WEBVTT\n\n" + "\n".join(blocks)
