"""Text guards: what Whisper must not be allowed to say.

Whisper invents text on silence and noise ("you", "Thank you.") and can loop on
hard audio ("ha, ha, ha, ..." to the token limit). The VAD keeps most of that
away from the model; these checks catch the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Whisper's own rule (openai/whisper transcribe.py) uses 0.6.
NO_SPEECH_THRESHOLD = 0.6
# A unit of up to this many words repeated back to back more than MAX_REPEATS times is a loop.
MAX_UNIT_WORDS = 8
MAX_REPEATS = 2


@dataclass(frozen=True)
class Verdict:
    text: str
    reason: str  # "" when the text should be sent


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def _loop_at(keys: list[str], i: int, max_repeats: int) -> tuple[int, int] | None:
    """The shortest unit starting at ``i`` that repeats more than ``max_repeats``
    times back to back, as (unit length, repeats)."""
    for n in range(1, min(MAX_UNIT_WORDS, len(keys) - i) + 1):
        unit = keys[i : i + n]
        repeats = 1
        while keys[i + repeats * n : i + (repeats + 1) * n] == unit:
            repeats += 1
        if repeats > max_repeats:
            return n, repeats
    return None


def collapse_repeats(text: str, max_repeats: int = MAX_REPEATS) -> str:
    """Cut any run of a 1..8-word unit repeated back to back down to ``max_repeats``.

    "Ah, ha, ha, ha, ha, ha" becomes "Ah, ha, ha,"; ordinary text is unchanged.
    """
    words = text.split()
    keys = [_norm(w) for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        loop = _loop_at(keys, i, max_repeats)
        if loop is None:
            out.append(words[i])
            i += 1
        else:
            n, repeats = loop
            out.extend(words[i : i + n * max_repeats])
            i += n * repeats
    return " ".join(out)


HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "bye",
    }
)


def judge(text: str, no_speech_prob: float) -> Verdict:
    """Decide whether a transcript goes to the client, and clean it up if so."""
    text = collapse_repeats(text.strip())
    if not text or not any(_norm(w) for w in text.split()):
        return Verdict("", "no_text")
    if no_speech_prob > NO_SPEECH_THRESHOLD:
        return Verdict("", "no_speech")
    if (
        " ".join(_norm(w) for w in text.split()) in HALLUCINATIONS
        and no_speech_prob > NO_SPEECH_THRESHOLD / 2
    ):
        return Verdict("", "hallucination")
    return Verdict(text, "")
