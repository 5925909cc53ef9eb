"""A pack's transcript split back into its segments: pure.

A pack (``SegmentJob.parts``, made by ``services.ingest.core.packs``) is several segments of a
file joined by silence and decoded in one window, its words timed. Each word goes to the part
its middle falls in (a word in a gap, to the nearer part), with its times made the part's own,
so each segment is answered with its own words and text as if it had been decoded alone.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import replace

from services.protocol import Part, SegmentJob
from services.transcriber.interface import Transcript
from services.transcriber.words import Word


def split(parts: Sequence[Part], words: Sequence[Word]) -> list[list[Word]]:
    """``words`` (times in the pack) as each part's, in order (times from the part's start)."""
    # Between two parts, the boundary is the middle of the gap that joins them.
    bounds = [(a.offset + a.length + b.offset) / 2 for a, b in itertools.pairwise(parts)]
    out: list[list[Word]] = [[] for _ in parts]
    for word in words:
        n = bisect.bisect_right(bounds, (word.start + word.end) / 2)
        part = parts[n]

        def inside(t: float, part: Part = part) -> float:
            return min(max(t - part.offset, 0.0), part.length)

        out[n].append(replace(word, start=inside(word.start), end=inside(word.end)))
    return out


def pieces(job: SegmentJob, transcript: Transcript) -> list[tuple[int, float, float, Transcript]]:
    """(segment, its start in the stream, its length, its transcript) of each segment ``job``
    answers: itself, or each part of a pack (its words' text, the pack's no-speech probability)."""
    if not job.parts:
        return [(job.segment, job.start, job.duration, transcript)]
    return [
        (
            part.segment,
            part.start,
            part.length,
            Transcript(" ".join(w.word for w in words), transcript.no_speech_prob, tuple(words)),
        )
        for part, words in zip(job.parts, split(job.parts, transcript.words), strict=True)
    ]
