"""Repetition and hallucination guards on transcript text."""

from __future__ import annotations

import pytest

from services.transcriber.guard import collapse_repeats, judge


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ah, ha, ha, ha, ha, ha, ha, ha.", "Ah, ha, ha,"),
        ("I am fine, thank you.", "I am fine, thank you."),
        ("no no", "no no"),
        ("go go go go go", "go go"),
        ("a b c a b c a b c a b c done", "a b c a b c done"),
        ("", ""),
    ],
)
def test_collapse_repeats(text: str, expected: str) -> None:
    assert collapse_repeats(text) == expected


def test_judge() -> None:
    assert judge(" you", 0.93).reason == "no_speech"
    assert judge("Thank you.", 0.4).reason == "hallucination"
    assert judge("Thank you.", 0.05).text == "Thank you."  # a real thank-you is kept
    assert judge(" ... ", 0.0).reason == "no_text"
    assert judge("Kal milte hain", 0.1).text == "Kal milte hain"
