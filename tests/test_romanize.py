"""tools.romanize: the Devanagari transliterator, the loose normal form and the scores built on them."""

from __future__ import annotations

import pytest

from tools.romanize import edits, english_tokens, loose, romanize, score
from tools.speech import wer


@pytest.mark.parametrize(
    ("devanagari", "latin"),
    [
        ("कमल", "kamal"),  # word-final schwa dropped
        ("न", "na"),  # but not in a word of one syllable
        ("पुत्र", "putra"),  # nor after a conjunct
        ("समझना", "samajhnaa"),  # medial schwa: V C[a] C V
        ("आपका", "aapkaa"),
        ("बहन", "bahan"),
        ("नमस्ते", "namaste"),
        ("नहीं", "nahiin"),  # matra, anusvara
        ("संभव", "sambhav"),  # anusvara before a labial
        ("मैं", "main"),
        ("हूँ", "huun"),  # chandrabindu
        ("ज़रूरत", "zaruurat"),  # nukta sign
        ("लड़की", "larkii"),  # precomposed or decomposed nukta alike
        ("डॉक्टर", "doktar"),  # candra o
        ("ज्ञान", "gyaan"),
        ("कृपया", "kripyaa"),
        ("१२३ रुपये।", "123 rupye."),  # digits and danda
        ("ok भाई", "ok bhaaii"),  # Latin passes through
    ],
)
def test_romanize(devanagari: str, latin: str) -> None:
    assert romanize(devanagari) == latin


def test_decomposed_nukta_is_the_precomposed_letter() -> None:
    assert romanize("\u0921\u093c") == romanize("\u095c") == "ra"


@pytest.mark.parametrize(
    ("devanagari", "whisper"),
    [
        ("ठीक है", "Theek hai."),
        ("भाई", "bhai"),
        ("हूँ", "hoon"),
        ("और", "aur"),
        ("धन्यवाद", "dhanyawad"),
        ("ज़रूरत", "zaroorat"),
        ("फ़ोन", "fon"),
        ("आपका", "aapka"),
        ("मुझे", "mujhe"),
    ],
)
def test_loose_form_meets_common_romanisations(devanagari: str, whisper: str) -> None:
    assert loose(romanize(devanagari)) == loose(whisper)


def test_loose_form_details() -> None:
    assert loose("Nahīṅ, THEEK hai!") == "nahin tik he"  # diacritics, case, punctuation
    assert loose("phone wala 2 baje") == "fone vala 2 baje"  # ph, w; digits as they are
    assert loose("chacha ki kitaab") == "caca ki kitab"  # ch kept as c, doubled letters
    assert loose("quick box") == "kuik boks"


def test_edits_split_and_match_wer() -> None:
    ref = "the cat sat on the mat"
    for hyp, sdi in [
        ("the cat sat sat on the mat today", (0, 0, 2)),
        ("the cat on the mat", (0, 1, 0)),
        ("a cat sat on the hat", (2, 0, 0)),
        ("the cat sat sat on mat today", (2, 0, 1)),  # a tie: substitutions first
    ]:
        e = edits(english_tokens(ref), english_tokens(hyp))
        assert (e.substitutions, e.deletions, e.insertions) == sdi
        assert e.rate == pytest.approx(wer(ref, hyp))
    e = edits(["a", "b", "c"], ["a", "x", "c"])
    assert (e.substitutions, e.deletions, e.insertions, e.ref) == (1, 0, 0, 3)
    assert edits([], ["a"]).insertions == 1 and edits(["a"], []).deletions == 1


def test_score_hindi_and_english() -> None:
    hindi = score("मैं ठीक हूँ, धन्यवाद।", "Main theek hoon, dhanyavaad.", "hi")
    assert hindi.words.errors == 0 and hindi.words.ref == 4 and hindi.chars.errors == 0
    split = score("कर दिया", "kardiya", "hi")  # words joined: a word error, no character error
    assert split.words.errors == 2 and split.chars.errors == 0
    english = score("He was not an ill-disposed young man.", "he was not an ill disposed young man", "en")
    assert english.words.errors == 0 and english.words.ref == 8
    assert score("go forward ten meters", "Go forward 10 meters.", "en").words.errors == 1
    assert score("go forward ten meters", "Go forward 10 meters.", "en", digits=True).words.errors == 0
    assert score("four of clubs", "for of clubs", "en", digits=True).words.errors == 1
