"""Eager endpointing for one session: sans-I/O.

When the segmenter sees a pause begin (``Tentative``, ``--eager-ms`` into it) the session
queues the segment that pause would close as a *guess*, before ``--silence-ms`` confirms the
pause. If the segment that closes has the guess's bounds, it is the same audio: the guess's
transcript is its final and no second job is queued, so the model's time hides behind the
hangover. If speech resumed, the guess is abandoned and its result, when it comes, is dropped
(``wasted``). Finals are therefore identical with and without eager endpointing.

Bounded: a session has at most one guess whose result is still awaited (``--result-timeout``
caps how long that blocks the next), and the session asks for none while the pool's stream
holds more than ``--eager-max-backlog`` segments (the model has no idle time to spend).
Anchor: Deepgram Flux's EagerEndOfTurn / TurnResumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.protocol import SegmentResult
from services.segmenter import Segment

Verdict = Literal["final", "held", "wasted"]


@dataclass
class Guess:
    token: int  # carried by the job and echoed by its result: SegmentJob.eager
    number: int  # the segment number it would get
    start: float
    end: float
    result: SegmentResult | None = None  # arrived before the pause was confirmed


class Eager:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tokens = 0
        self._open: Guess | None = None  # the latest guess, neither confirmed nor abandoned
        self._awaited: tuple[int, float] | None = None  # (token, deadline) of a guess in flight
        self._confirmed: set[int] = set()  # tokens of confirmed guesses whose result is awaited

    def propose(self, number: int, segment: Segment, now: float) -> int | None:
        """A pause began: the token of a new guess to queue, or None while one is in flight."""
        self._open = None
        if self._awaited is not None and now < self._awaited[1]:
            return None
        self._tokens += 1
        self._open = Guess(self._tokens, number, segment.start, segment.end)
        self._awaited = (self._tokens, now + self.timeout)
        return self._tokens

    def close(self, number: int, segment: Segment) -> Guess | None:
        """A segment closed as ``number``: the guess that holds exactly its audio, if any (then
        no job is queued for it; its ``result`` is set if it came already)."""
        guess, self._open = self._open, None
        if guess is None or (guess.number, guess.start, guess.end) != (number, segment.start, segment.end):
            return None
        if guess.result is None:
            self._confirmed.add(guess.token)
        return guess

    def abandon(self) -> None:
        """The open segment ended otherwise (dropped, or speech resumed into another guess)."""
        self._open = None

    def result(self, result: SegmentResult) -> Verdict:
        """Where a guess's result goes: the final of its confirmed segment, held until the
        pause is confirmed, or nowhere (its guess was abandoned)."""
        token = result.eager
        if self._awaited is not None and self._awaited[0] == token:
            self._awaited = None
        if token in self._confirmed:
            self._confirmed.discard(token)
            return "final"
        if self._open is not None and self._open.token == token and self._open.result is None:
            self._open.result = result
            return "held"
        return "wasted"
