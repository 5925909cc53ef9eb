"""Word timings from a token alignment: pure.

Whisper's decoder attends, through a few "alignment heads", to where each token is in the audio;
dynamic time warping over those attention weights (CTranslate2's ``align``) gives each text token
the 20 ms encoder step where it starts. Here tokens are grouped into words (whole characters
first: a Devanagari letter can span tokens; a new word at each leading space; punctuation stays
with its word; every token in one word, since a token's step is found by its position); each
word gets the start of its first token, the start of the next word as its end and the mean
probability of its tokens as its confidence; ``snap_to_speech`` then moves the boundaries onto
the audio's pauses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

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
    """``tokens`` as (word, its tokens). Every token lands in one word, in order, because
    ``timed_words`` finds a token's step by its position: a whitespace-only token goes with the
    word after it (it is that word's leading space; after the last word, with the last word)."""
    words: list[tuple[str, list[int]]] = []
    space, space_ids = "", list[int]()  # whitespace-only pieces waiting for the next word
    opening = False  # the last word so far is an opening mark waiting for its word
    for text, ids in characters(decode, tokens):
        if not text.strip():
            space, space_ids = space + text, space_ids + ids
            continue
        text, ids, space, space_ids = space + text, space_ids + ids, "", []
        mark = text.strip()
        glued = bool(words) and (opening or not text[0].isspace())  # a word's rest, or its mark
        if glued:
            words[-1] = (words[-1][0] + text, words[-1][1] + ids)
        else:
            words.append((text, ids))
        opening = not glued and mark in OPENING
    if words and space_ids:
        words[-1] = (words[-1][0], words[-1][1] + space_ids)
    return [(text.strip(), ids) for text, ids in words]


def characters(decode: Callable[[list[int]], str], tokens: Sequence[int]) -> list[tuple[str, list[int]]]:
    """``tokens`` cut where a whole character (or more) has decoded: a letter can span tokens
    (its UTF-8 bytes do). A byte sequence that never completes a character (an invalid UTF-8
    fragment) is cut where it ends, as OpenAI's ``split_tokens_on_unicode`` does: a replacement
    character in a piece that the whole text's decode also has at that place will not complete."""
    whole = decode(list(tokens))
    pieces: list[tuple[str, list[int]]] = []
    pending: list[int] = []
    at = 0  # where the pending piece starts in ``whole``
    for token in tokens:
        pending.append(token)
        text = decode(pending)
        bad = text.find("\ufffd")
        if bad < 0 or at + bad >= len(whole) or whole[at + bad] == "\ufffd":
            pieces.append((text, pending))
            at += len(text)
            pending = []
    if pending:  # only where ``decode`` is not a concatenation of the tokens' bytes
        pieces.append((decode(pending), pending))
    return pieces


def token_steps(weights: NDArray[np.float32], frames: int) -> list[int]:
    """The encoder step where each token starts, from the alignment heads' cross-attention
    ``weights`` ([heads, tokens, steps]; the rows of the text tokens and end of text): each head
    normalised over the tokens, median-filtered over 7 steps, the heads averaged, then dynamic
    time warping (OpenAI's ``timing.py`` does the same; CTranslate2's ``align`` too)."""
    matrix = weights[:, :, : max(1, frames)].astype(np.float64)
    matrix = (matrix - matrix.mean(axis=1, keepdims=True)) / (matrix.std(axis=1, keepdims=True) + 1e-9)
    return dtw_starts(-median_of_7(matrix).mean(axis=0))


def median_of_7(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each value of ``matrix`` replaced by the median of the 7 along its last axis centred on
    it, the edge values repeated past the ends: ``scipy.ndimage.median_filter(matrix, size=(1,
    1, 7), mode="nearest")``, the same values from one partition of strided windows, in about
    half its time."""
    padded = np.pad(matrix, [(0, 0)] * (matrix.ndim - 1) + [(3, 3)], mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 7, axis=-1)
    return np.partition(windows, 3, axis=-1)[..., 3]


def dtw_starts(cost: NDArray[np.float64]) -> list[int]:
    """The column where each row starts on the cheapest monotonic path from the top-left to the
    bottom-right of ``cost`` (rows: tokens, columns: steps); among paths of equal cost, the one
    whose steps back from the end prefer the diagonal, then up, then left.

    Cell (i, j) of the cumulative table depends on (i - 1, j - 1), (i - 1, j) and (i, j - 1),
    all on the two anti-diagonals before its own (i + j): each anti-diagonal is one numpy step,
    tokens + steps of them instead of tokens x steps Python steps (docs/protocols.md, Word timings, for
    the figures). The table is kept skewed, ``skewed[i + j, i]`` holding cell (i, j); cells off
    the table (row or column 0 but the origin, or past the last column) stay infinite."""
    rows, cols = cost.shape
    diagonals = rows + cols + 1
    row, col = np.indices((rows, cols))
    skewed_cost = np.full((diagonals, rows + 1), np.inf)
    skewed_cost[row + col + 2, row + 1] = cost  # the cost of entering cell (row + 1, col + 1)
    skewed = np.full((diagonals, rows + 1), np.inf)
    skewed[0, 0] = 0.0
    for d in range(2, diagonals):
        before, last = skewed[d - 2], skewed[d - 1]
        best = np.minimum(np.minimum(before[:-1], last[:-1]), last[1:])  # diagonal, up, left
        skewed[d, 1:] = skewed_cost[d, 1:] + best
    row, col = np.indices((rows + 1, cols + 1))
    total = skewed[row + col, row]
    diagonal, up, left = total[:-1, :-1], total[:-1, 1:], total[1:, :-1]
    best = np.minimum(np.minimum(diagonal, up), left)
    # Into cell (i + 1, j + 1) from 0: the diagonal, 1: above, 2: the left; a tie goes to the
    # first of them (the order np.argmin over the three would take).
    came = np.where(diagonal == best, 0, np.where(up == best, 1, 2)).astype(np.int8)
    starts = [cols] * rows
    i, j = rows, cols
    while i > 0 and j > 0:
        starts[i - 1] = j - 1
        step = int(came[i - 1, j - 1])
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
