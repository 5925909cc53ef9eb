"""Finals as subtitle files: SubRip (.srt), WebVTT (.vtt) or JSON lines (.jsonl)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

FORMATS = (".srt", ".vtt", ".jsonl")


def timestamp(seconds: float, separator: str) -> str:
    millis = round(max(0.0, seconds) * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def render(finals: Sequence[Mapping[str, object]], suffix: str) -> str:
    """The finals that have text and times, in the format ``suffix`` names."""
    cues = [
        (float(f["start"]), float(f["end"]), str(f["text"]).strip())  # type: ignore[arg-type]
        for f in finals
        if str(f.get("text", "")).strip() and isinstance(f.get("start"), int | float)
    ]
    if suffix == ".jsonl":
        return "".join(
            json.dumps({"start": s, "end": e, "text": t}, ensure_ascii=False) + "\n" for s, e, t in cues
        )
    if suffix == ".srt":
        blocks = [
            f"{i}\n{timestamp(s, ',')} --> {timestamp(e, ',')}\n{t}\n" for i, (s, e, t) in enumerate(cues, 1)
        ]
        return "\n".join(blocks)
    if suffix == ".vtt":
        return "WEBVTT\n\n" + "\n".join(
            f"{timestamp(s, '.')} --> {timestamp(e, '.')}\n{t}\n" for s, e, t in cues
        )
    raise ValueError(f"unknown subtitle format {suffix!r}; use one of {', '.join(FORMATS)}")


def output_path(value: str) -> Path:
    """Argparse type: a path ending in .srt, .vtt or .jsonl."""
    path = Path(value)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{value}: the file name must end in {', '.join(FORMATS)}")
    return path
