"""Word timings from a token alignment: pure.

Whisper's decoder attends, through a few "alignment heads", to where each token is in the audio;
dynamic time warping over those attention weights (CTranslate2's ``align``) gives each text token
the 20 ms encoder step where it starts. Here tokens are grouped into words (whole characters
first: a Devanagari letter can span tokens; a new word at each leading space; punctuation stays
with its word); each word gets the start of its first token, the start of the next word as its
end and the mean probability of its tokens as its confidence; ``snap_to_speech`` then moves the
boundaries onto the audio's pauses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import median_filter

SECONDS_PER_STEP = 0.02  # one encoder position: 2 mel frames of 10 ms
FRAME_S = 0.01  # the energy frames words are snapped to
SILENCE_DB = 45.0  # a frame this far below the clip's loud frames is silence
PAUSE_S = 0.05  # silence before a word's onset; shorter gaps are inside words (a stop's closure)
OPENING = "\"'“¿([{-"  # a mark that belongs to the word after it


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the clip
    end: float
    probability: float

    def shifted(self, offset: float) -> dict[str, float | str]:
        """As a final carries it: times in the stream, ``offset`` being the segment's start."""
        return {
            "word": self.word,
            "start": round(offset + self.start, 3),
            "end": round(offset + self.end, 3),
            "confidence": round(self.probability, 3),
        }


def split_words(decode: Callable[[list[int]], str], tokens: Sequence[int]) -> list[tuple[str, list[int]]]:
    """``tokens`` as (word, its tokens)."""
    pieces: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    for token in tokens:
        pending.append(token)
        text = decode(pending)
        if "\ufffd" not in text:  # a whole character (or more) decoded
            pieces.append((text, pending))
            pending = []
    words: list[tuple[str, list[int]]] = []
    opening = False  # the last word so far is an opening mark waiting for its word
    for text, ids in pieces:
        mark = text.strip()
        if not mark:
            continue
        glued = bool(words) and (opening or not text.startswith(" "))  # a word's rest, or its mark
        if glued:
            words[-1] = (words[-1][0] + text, words[-1][1] + list(ids))
        else:
            words.append((text, list(ids)))
        opening = not glued and mark in OPENING
    return [(text.strip(), ids) for text, ids in words]


def token_steps(weights: NDArray[np.float32], frames: int) -> list[int]:
    """The encoder step where each token starts, from the alignment heads' cross-attention
    ``weights`` ([heads, tokens, steps]; the rows of the text tokens and end of text): each head
    normalised over the tokens, median-filtered over 7 steps, the heads averaged, then dynamic
    time warping (OpenAI's ``timing.py`` does the same; CTranslate2's ``align`` too)."""
    matrix = weights[:, :, : max(1, frames)].astype(np.float64)
    matrix = (matrix - matrix.mean(axis=1, keepdims=True)) / (matrix.std(axis=1, keepdims=True) + 1e-9)
    matrix = median_filter(matrix, size=(1, 1, 7), mode="nearest").mean(axis=0)
    return dtw_starts(-matrix)


def dtw_starts(cost: NDArray[np.float64]) -> list[int]:
    """The column where each row starts on the cheapest monotonic path from the top-left to the
    bottom-right of ``cost`` (rows: tokens, columns: steps)."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    came = np.zeros((rows + 1, cols + 1), dtype=np.int8)  # 0: diagonal, 1: from above, 2: from the left
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            options = (total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
            step = int(np.argmin(options))
            total[i, j] = cost[i - 1, j - 1] + options[step]
            came[i, j] = step
    starts = [cols] * rows
    i, j = rows, cols
    while i > 0 and j > 0:
        starts[i - 1] = j - 1
        step = int(came[i, j])
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return starts


def timed_words(
    words: Sequence[tuple[str, list[int]]],
    token_steps: Sequence[int],
    token_probabilities: Sequence[float],
    duration: float,
) -> list[Word]:
    """Each word's times from the encoder step of each of its tokens (``token_steps``, one per
    token, in order) and its confidence from theirs; ends are kept within ``duration``."""
    out: list[Word] = []
    index = 0
    bounds = []
    for _, ids in words:
        bounds.append((index, index + len(ids)))
        index += len(ids)
    for (text, _), (first, last) in zip(words, bounds, strict=True):
        start = token_steps[first] * SECONDS_PER_STEP if first < len(token_steps) else duration
        # The next word's first token, or the end of text's step after the last word.
        end = token_steps[last] * SECONDS_PER_STEP if last < len(token_steps) else duration
        probs = token_probabilities[first:last]
        probability = math.fsum(probs) / len(probs) if probs else 0.0
        start = min(start, duration)
        out.append(Word(text, start, min(max(end, start), duration), probability))
    return out


def snap_to_speech(words: Sequence[Word], clip: NDArray[np.float32], rate: int) -> list[Word]:
    """Move word boundaries to where the audio says. The alignment places a word's start where
    the attention leaves the previous word, which is early: inside that word's tail, or at the
    start of the pause before the word (measured on words spoken apart: by 0.15 to 0.35 s). So a
    word starts at the first onset (loud after at least PAUSE_S of silence) between its aligned
    start and the next word's, and ends at the last loud frame before the next word starts.
    Where speech has no pause (connected words) the aligned times stay."""
    if not words:
        return []
    hop = int(rate * FRAME_S)
    frames = len(clip) // hop
    if frames == 0:
        return list(words)
    energy = np.square(clip[: frames * hop].reshape(frames, hop)).mean(axis=1)
    db = 10 * np.log10(energy + 1e-10)
    loud = db > np.percentile(db, 95) - SILENCE_DB
    quiet_before = np.zeros(frames, dtype=int)  # silent frames just before each frame
    for n in range(1, frames):
        quiet_before[n] = 0 if loud[n - 1] else quiet_before[n - 1] + 1
    pause = round(PAUSE_S / FRAME_S)

    def onset(start: float, end: float) -> float | None:
        lo, hi = round(start / FRAME_S), min(frames, round(end / FRAME_S))
        hits = [n for n in range(lo, hi) if loud[n] and (quiet_before[n] >= pause or n == 0)]
        return hits[0] * FRAME_S if hits else None

    def offset(start: float, end: float) -> float | None:
        lo, hi = round(start / FRAME_S), min(frames, round(end / FRAME_S))
        hits = np.flatnonzero(loud[lo:hi])
        return (lo + int(hits[-1]) + 1) * FRAME_S if len(hits) else None

    starts = []
    for n, word in enumerate(words):
        until = words[n + 1].start if n + 1 < len(words) else word.end
        found = onset(word.start, max(until, word.start + FRAME_S))
        starts.append(word.start if found is None else found)
    out = []
    for n, word in enumerate(words):
        limit = starts[n + 1] if n + 1 < len(words) else len(clip) / rate
        found = offset(starts[n], limit)
        out.append(replace(word, start=starts[n], end=max(starts[n], word.end if found is None else found)))
    return out


def clip_words(
    decode: Callable[[list[int]], str],
    tokens: Sequence[int],
    steps: Sequence[int],
    probabilities: Sequence[float],
    clip: NDArray[np.float32],
    rate: int,
) -> list[Word]:
    """A clip's timed words, from its text ``tokens``, the encoder step where each starts (and
    end of text's) and each token's probability: grouped, timed, snapped to the clip's pauses.
    Both backends end their alignment here."""
    timed = timed_words(split_words(decode, tokens), steps, probabilities, len(clip) / rate)
    return snap_to_speech(timed, clip, rate)
