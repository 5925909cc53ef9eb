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
    """The finals that have text and times, in the format ``suffix`` names, in time order. With
    several channels each cue names its speaker (the channel's role, or ``channel N``): a WebVTT
    voice tag, an ``agent:`` prefix in SubRip; JSON lines carry ``channel``, ``role`` and
    ``words`` as the server sent them."""
    cues = sorted(
        (f for f in finals if str(f.get("text", "")).strip() and isinstance(f.get("start"), int | float)),
        key=lambda f: (float(f["start"]), f.get("channel", 0)),  # type: ignore[arg-type]
    )
    several = len({f.get("channel", 0) for f in cues}) > 1 or any("role" in f for f in cues)
    if suffix == ".jsonl":
        keys = ("start", "end", "text", "channel", "role", "words", "confidence")
        return "".join(json.dumps({k: f[k] for k in keys if k in f}, ensure_ascii=False) + "\n" for f in cues)
    lines = []
    for f in cues:
        start, end, text = float(f["start"]), float(f["end"]), str(f["text"]).strip()  # type: ignore[arg-type]
        who = str(f.get("role", f"channel {f.get('channel', 0)}")) if several else None
        lines.append((start, end, text, who))
    if suffix == ".srt":
        blocks = [
            f"{i}\n{timestamp(s, ',')} --> {timestamp(e, ',')}\n{t if w is None else f'{w}: {t}'}\n"
            for i, (s, e, t, w) in enumerate(lines, 1)
        ]
        return "\n".join(blocks)
    if suffix == ".vtt":
        return "WEBVTT\n\n" + "\n".join(
            f"{timestamp(s, '.')} --> {timestamp(e, '.')}\n{t if w is None else f'<v {w}>{t}'}\n"
            for s, e, t, w in lines
        )
    raise ValueError(f"unknown subtitle format {suffix!r}; use one of {', '.join(FORMATS)}")


def output_path(value: str) -> Path:
    """Argparse type: a path ending in .srt, .vtt or .jsonl."""
    path = Path(value)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{value}: the file name must end in {', '.join(FORMATS)}")
    return path
