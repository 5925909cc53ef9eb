"""Scoring that survives romanisation: Devanagari references against Whisper's Latin-letter Hindi.

whisper-base forced to ``language="en", task="transcribe"`` (what this service and Oriserve's
server do) writes Hindi in Latin letters, each time a little differently ("nahin", "nahi",
"nai"). So a Hindi reference in Devanagari is scored in three steps, all deterministic, no network:

1. ``romanize``: Devanagari -> ITRANS-like Latin, letter by letter. Consonants carry the inherent
   ``a`` unless a matra (vowel sign) or virama follows; independent vowels and matras map to
   ``a aa i ii u uu ri e ai o au`` (candra e/o to ``e``/``o``); nukta consonants to ``q kh g z f
   r rh``; anusvara to ``m`` before a labial (``p ph b bh m``) and ``n`` elsewhere, chandrabindu
   to ``n``, visarga to ``h``; Devanagari digits to ASCII digits; dandas to full stops. Schwa
   deletion: the inherent ``a`` of a word's last consonant is dropped when the word has another
   vowel before it, unless a conjunct ends it ("कमल" -> "kamal", "न" -> "na", "पुत्र" ->
   "putra"); then, from the word's end, a consonant between a vowel and a consonant with a
   vowel loses its ``a`` too (V C[a] C V -> V C C V: "समझना" -> "samajhnaa", "आपका" ->
   "aapkaa", "बहन" -> "bahan"). The rule has exceptions ("रुपये" -> "rupye", often said
   "rupaye"); CER absorbs them. Latin text passes through.
2. ``loose``: one normal form for both sides: NFKD, combining marks dropped, lowercase; every
   character that is not a letter or digit becomes a space; then, in this order: ``ee`` -> ``i``,
   ``oo`` -> ``u``; every run of one letter collapses to one (``aa`` -> ``a``, ``ii`` -> ``i``,
   ``uu`` -> ``u``, ``tt`` -> ``t``); ``x`` -> ``ks``, ``q`` -> ``k``, ``ph`` -> ``f``, ``w`` ->
   ``v``, ``z`` -> ``j``, ``ck`` -> ``k``, ``c`` not before ``h`` -> ``k``, ``sh`` -> ``s``; an
   ``h`` after a stop (``b c d g j k p t``) is dropped (aspiration: ``bh`` -> ``b``, ``ch`` ->
   ``c``, ``th`` -> ``t``); ``y`` between vowels or at a word's end -> ``i``; ``ai`` -> ``e``,
   ``au`` -> ``o``; runs of one letter collapse again. Digits stay as they are. So "ठीक" ->
   "thiik" and "theek" both become "tik", "भाई" -> "bhaaii" and "bhai" both "be".
3. ``score``: WER over the loose words and CER over the loose characters with the spaces
   removed (Hinglish spellings split and join words freely: "kar diya" / "kardiya").

English is scored on ``tools.speech.words`` (lowercase, punctuation dropped but apostrophes,
hyphens split, numbers as they are), the tokens ``tools.speech.wer`` uses; ``edits`` gives the
substitutions, deletions and insertions of the same alignment, so its rate equals ``wer``'s.
``digits=True`` also reads each number word from zero to twenty and each of the tens as its
digits on both sides ("ten" = "10"), for a second figure that does not count Whisper's habit of
writing numbers in digits as errors; compounds ("twenty five") are left as they are.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from tools.speech import words as english_words

VIRAMA = "\u094d"
NUKTA = "\u093c"
ANUSVARA = "\u0902"
CHANDRABINDU = "\u0901"
VISARGA = "\u0903"

CONSONANTS = {
    "क": "k", "ख": "kh", "ग": "g", "घ": "gh", "ङ": "n",
    "च": "ch", "छ": "chh", "ज": "j", "झ": "jh", "ञ": "n",
    "ट": "t", "ठ": "th", "ड": "d", "ढ": "dh", "ण": "n",
    "त": "t", "थ": "th", "द": "d", "ध": "dh", "न": "n",
    "प": "p", "फ": "ph", "ब": "b", "भ": "bh", "म": "m",
    "य": "y", "र": "r", "ल": "l", "ळ": "l", "व": "v",
    "श": "sh", "ष": "sh", "स": "s", "ह": "h",
    # precomposed nukta letters
    "क़": "q", "ख़": "kh", "ग़": "g", "ज़": "z", "ड़": "r", "ढ़": "rh", "फ़": "f", "य़": "y",
}  # fmt: skip
# A consonant followed by the nukta sign.
NUKTA_FORMS = {"क": "q", "ख": "kh", "ग": "g", "ज": "z", "ड": "r", "ढ": "rh", "फ": "f", "य": "y"}
VOWELS = {
    "अ": "a", "आ": "aa", "इ": "i", "ई": "ii", "उ": "u", "ऊ": "uu", "ऋ": "ri",
    "ए": "e", "ऐ": "ai", "ओ": "o", "औ": "au", "ऍ": "e", "ऑ": "o", "ऎ": "e", "ऒ": "o",
}  # fmt: skip
MATRAS = {
    "\u093e": "aa", "\u093f": "i", "\u0940": "ii", "\u0941": "u", "\u0942": "uu", "\u0943": "ri",
    "\u0947": "e", "\u0948": "ai", "\u094b": "o", "\u094c": "au", "\u0945": "e", "\u0949": "o",
    "\u0946": "e", "\u094a": "o",
}  # fmt: skip
LABIALS = ("p", "ph", "b", "bh", "m")
DIGITS = {chr(0x0966 + d): str(d) for d in range(10)}
DANDAS = {"।": ".", "॥": "."}


def _romanize_word(word: str) -> str:
    """One whitespace-free run of text; see the module docstring."""
    # Units of (latin, kind): "c" a consonant that still carries its inherent a, "h" a half
    # consonant (virama), "k" a consonant whose vowel sign follows, "v" a vowel, "x" the rest
    # (nasal signs, visarga, digits, Latin, punctuation).
    units: list[tuple[str, str]] = []
    text = unicodedata.normalize("NFC", word).replace("ज्ञ", "ग्य")  # jña is said gya in Hindi
    i = 0
    while i < len(text):
        ch = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch in CONSONANTS:
            latin = CONSONANTS[ch]
            if nxt == NUKTA:
                latin = NUKTA_FORMS.get(ch, latin)
                i += 1
            units.append((latin, "c"))
        elif ch in MATRAS and units and units[-1][1] == "c":
            units[-1] = (units[-1][0], "k")
            units.append((MATRAS[ch], "v"))
        elif ch == VIRAMA and units and units[-1][1] == "c":
            units[-1] = (units[-1][0], "h")
        elif ch in VOWELS:
            units.append((VOWELS[ch], "v"))
        elif ch == ANUSVARA:
            following = CONSONANTS.get(nxt, "")
            units.append(("m" if following in LABIALS else "n", "x"))
        elif ch == CHANDRABINDU:
            units.append(("n", "x"))
        elif ch == VISARGA:
            units.append(("h", "x"))
        elif ch in DIGITS:
            units.append((DIGITS[ch], "x"))
        elif ch in DANDAS:
            units.append((DANDAS[ch], "x"))
        elif ch not in (NUKTA, VIRAMA) and ch not in MATRAS:  # else a stray sign: dropped
            units.append((ch, "x"))
        i += 1
    keep = [kind == "c" for _, kind in units]  # which consonants still say their a
    for n, (_, kind) in enumerate(units):
        if kind == "c":
            final = all(k not in ("c", "k", "v", "h") for _, k in units[n + 1 :])
            vowel_before = any(k in ("c", "v") for _, k in units[:n])
            after_conjunct = n > 0 and units[n - 1][1] == "h"  # putra, mitra keep their a
            keep[n] = not (final and vowel_before and not after_conjunct)
    for n in reversed(range(len(units))):  # V C[a] C V -> V C C V, from the end (Ohala's rule)
        if not keep[n]:
            continue
        vowel_before = n > 0 and (units[n - 1][1] == "v" or keep[n - 1])
        vowel_after = n + 1 < len(units) and (units[n + 1][1] == "k" or keep[n + 1])
        if vowel_before and vowel_after:
            keep[n] = False
    return "".join(latin + ("a" if keep[n] else "") for n, (latin, _) in enumerate(units))


def romanize(text: str) -> str:
    """Devanagari (with any Latin, digits and punctuation in it) as ITRANS-like Latin."""
    return " ".join(_romanize_word(word) for word in text.split())


# --- the loose phonetic normal form ------------------------------------------------------------

_LOOSE_STEPS: tuple[tuple[str, str], ...] = (
    ("ee", "i"),
    ("oo", "u"),
    (r"([a-z])\1+", r"\1"),
    ("x", "ks"),
    ("q", "k"),
    ("ph", "f"),
    ("w", "v"),
    ("z", "j"),
    ("ck", "k"),
    (r"c(?!h)", "k"),
    ("sh", "s"),
    (r"(?<=[bcdgjkpt])h", ""),
    (r"(?<=[aeiou])y(?=[aeiou])|y\b", "i"),
    ("ai", "e"),
    ("au", "o"),
    (r"([a-z])\1+", r"\1"),
)


def loose(text: str) -> str:
    """Both sides' normal form for Hindi scoring (see the module docstring): words joined by one space."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower()
    plain = re.sub(r"[^a-z0-9]+", " ", plain)
    for pattern, replacement in _LOOSE_STEPS:
        plain = re.sub(pattern, replacement, plain)
    return " ".join(plain.split())


# --- alignment and scores ------------------------------------------------------------------------


@dataclass(frozen=True)
class Edits:
    """One Levenshtein alignment of a reference against a hypothesis."""

    ref: int  # reference tokens
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        return self.errors / max(1, self.ref)


def edits(ref: Sequence[str], hyp: Sequence[str]) -> Edits:
    """The fewest edits that turn ``ref`` into ``hyp``, split into S, D and I (ties broken in that
    order: a substitution before a deletion before an insertion)."""
    # cost[j], and per cell the (S, D, I) counts of the path that reached it.
    prev = [(j, (0, 0, j)) for j in range(len(hyp) + 1)]
    for i, r in enumerate(ref, 1):
        row = [(i, (0, i, 0))]
        for j, h in enumerate(hyp, 1):
            cost_sub, (s, d, ins) = prev[j - 1]
            best = (cost_sub + (r != h), (s + (r != h), d, ins))
            cost_del, (s, d, ins) = prev[j]
            if cost_del + 1 < best[0]:
                best = (cost_del + 1, (s, d + 1, ins))
            cost_ins, (s, d, ins) = row[j - 1]
            if cost_ins + 1 < best[0]:
                best = (cost_ins + 1, (s, d, ins + 1))
            row.append(best)
        prev = row
    s, d, ins = prev[-1][1]
    return Edits(len(ref), s, d, ins)


_UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip
_TENS = ("thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
NUMBER_WORDS = {w: str(n) for n, w in enumerate(_UNITS)} | {w: str(10 * n) for n, w in enumerate(_TENS, 3)}


def english_tokens(text: str, digits: bool = False) -> list[str]:
    """``tools.speech.words``; ``digits``: each number word (zero to twenty, the tens) as its digits."""
    tokens = english_words(text)
    return [NUMBER_WORDS.get(t, t) for t in tokens] if digits else tokens


def hindi_tokens(text: str, script: str = "latin") -> list[str]:
    """Loose words of Hindi text; ``script="devanagari"`` romanises it first."""
    return loose(romanize(text) if script == "devanagari" else text).split()


def hindi_chars(tokens: Sequence[str]) -> list[str]:
    """The characters CER counts: the loose words' letters, spaces removed."""
    return list("".join(tokens))


def is_devanagari(text: str) -> bool:
    return any("\u0900" <= ch <= "\u097f" for ch in text)


@dataclass(frozen=True)
class Score:
    words: Edits
    chars: Edits  # over characters (Hindi: without spaces; English: of the joined words)


def score(reference: str, hypothesis: str, language: str, digits: bool = False) -> Score:
    """WER and CER of ``hypothesis`` against ``reference``: Hindi (``hi``) on the loose
    romanised form, anything else on English tokens (``digits``: number words as digits)."""
    if language == "hi":
        ref = hindi_tokens(reference, "devanagari" if is_devanagari(reference) else "latin")
        hyp = hindi_tokens(hypothesis)
        return Score(edits(ref, hyp), edits(hindi_chars(ref), hindi_chars(hyp)))
    ref, hyp = english_tokens(reference, digits), english_tokens(hypothesis, digits)
    return Score(edits(ref, hyp), edits(list(" ".join(ref)), list(" ".join(hyp))))
