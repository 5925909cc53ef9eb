"""Word timings and confidence: the grouping, warping and snapping in-process, their accuracy
against ground truth built here (espeak-ng words joined with known pauses) on the real
whisper-base in both backends, and end to end: a session and a telephony call that ask for them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tokenizers
import torch
from numpy.typing import NDArray
from scipy.ndimage import median_filter

from services.stack import CT2_DIR, MODEL_DIR, Stack
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.interface import DEFAULT_CONTEXT_S, Decoding
from services.transcriber.model import WhisperModel
from services.transcriber.words import (
    Word,
    dtw_starts,
    median_of_7,
    snap_to_speech,
    split_words,
    timed_words,
    token_steps,
)
from tests.helpers import finals, run_client
from tests.platforms import call_frames, encode, fixture
from tests.test_calls import read_events, send_call
from tools.speech import SENTENCES, Speech, spoken_apart

TOLERANCE_S = 0.15


def test_tokens_become_whole_words_with_their_punctuation() -> None:
    pieces = {1: " Hel", 2: "lo", 3: ",", 4: " world", 5: ".", 6: ' "', 7: "quote", 8: '"'}
    # A Devanagari letter over two tokens: neither decodes alone.
    utf8 = {9: " न".encode()[:2], 10: " न".encode()[2:], 11: "मस्ते".encode()}

    def decode(ids: list[int]) -> str:
        raw = b"".join(utf8[i] if i in utf8 else pieces[i].encode() for i in ids)
        return raw.decode("utf-8", errors="replace")

    words = split_words(decode, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert words == [("Hello,", [1, 2, 3]), ("world.", [4, 5]), ('"quote"', [6, 7, 8]), ("नमस्ते", [9, 10, 11])]


def test_each_word_gets_its_first_tokens_step_and_the_next_words_as_its_end() -> None:
    words = [("one", [1]), ("two", [2, 3])]
    one, two = timed_words(words, [10, 50, 60, 90], [0.9, 0.8, 0.6], duration=2.0)
    assert one == Word("one", 0.2, 1.0, 0.9)
    assert (two.word, two.start, two.end) == ("two", 1.0, 1.8) and abs(two.probability - 0.7) < 1e-9


def test_boundaries_move_onto_the_pauses_but_not_inside_connected_speech() -> None:
    rate = 16000
    tone = np.sin(2 * np.pi * 220 * np.arange(int(0.4 * rate)) / rate).astype(np.float32) * 0.5
    gap = np.zeros(int(0.3 * rate), np.float32)
    clip = np.concatenate([gap, tone, gap, tone, tone])  # words at 0.3-0.7, 1.0-1.4 and 1.4-1.8
    aligned = [Word("a", 0.1, 0.8, 1), Word("b", 0.8, 1.35, 1), Word("c", 1.35, 1.8, 1)]
    snapped = [(round(w.start, 3), round(w.end, 3)) for w in snap_to_speech(aligned, clip, rate)]
    # No pause between b and c: c's start stays where the alignment put it.
    assert snapped == [(0.3, 0.7), (1.0, 1.35), (1.35, 1.8)]


@pytest.fixture(scope="module")
def tokenizer() -> tokenizers.Tokenizer:
    """whisper-base's tokenizer, as the CTranslate2 backend loads it."""
    assert (MODEL_DIR / "tokenizer.json").is_file(), "run `make offline-model` first (make test does)"
    return tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))


@pytest.fixture(scope="module", params=["tokenizers", "transformers"])
def decode(request: pytest.FixtureRequest, tokenizer: tokenizers.Tokenizer) -> Callable[[list[int]], str]:
    """Each backend's decode: the CTranslate2 backend's (tokenizers), the transformers one's."""
    if request.param == "tokenizers":
        return lambda ids: str(tokenizer.decode(ids))
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    return lambda ids: str(loaded.decode(ids))


def token_ids(tokenizer: tokenizers.Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def token_id(tokenizer: tokenizers.Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    assert found is not None, token
    return int(found)


def test_a_whitespace_only_token_starts_the_next_word_and_no_later_time_shifts(
    tokenizer: tokenizers.Tokenizer, decode: Callable[[list[int]], str]
) -> None:
    big, space, world = (token_id(tokenizer, t) for t in ("Ġbig", "Ġ", "world"))
    # The decoder can say " big", " ", "world": the space still parts the words.
    assert split_words(decode, [big, space, world]) == [("big", [big]), ("world", [space, world])]
    tokens = token_ids(tokenizer, " big  world is")  # " big", " ", " world", " is"
    assert len(tokens) == 4 and decode(tokens[1:2]) == " "
    timed = timed_words(split_words(decode, tokens), [0, 10, 20, 30, 40], [0.5, 1.0, 0.9, 0.8], 1.0)
    # Each word from its own tokens: "is" starts at its token's step (30), not the one before.
    assert [(w.word, round(w.start, 3), round(w.end, 3)) for w in timed] == [
        ("big", 0.0, 0.2),
        ("world", 0.2, 0.6),
        ("is", 0.6, 0.8),
    ]
    assert [round(w.probability, 3) for w in timed] == [0.5, 0.95, 0.8]
    # After the last word, a space goes with it; nothing but spaces is no word.
    assert split_words(decode, [big, space]) == [("big", [big, space])]
    assert split_words(decode, [space, space]) == []


def test_a_fragment_that_never_completes_a_character_is_cut_and_the_words_after_it_stay(
    tokenizer: tokenizers.Tokenizer, decode: Callable[[list[int]], str]
) -> None:
    namaste = token_ids(tokenizer, " नमस्ते")
    fragment = namaste[0]  # " " and the first two of न's three bytes: the next token completes it
    assert decode([fragment]) == " \ufffd" and decode(namaste[:2]) == " न"
    tokens = [fragment, *token_ids(tokenizer, " big world")]  # न never completes
    words = split_words(decode, tokens)
    assert words == [("\ufffd", [fragment]), ("big", tokens[1:2]), ("world", tokens[2:3])]
    timed = timed_words(words, [5, 15, 25, 35], [0.2, 0.9, 0.8], 1.0)
    assert [(w.word, round(w.start, 3), round(w.end, 3)) for w in timed] == [
        ("\ufffd", 0.1, 0.3),
        ("big", 0.3, 0.5),
        ("world", 0.5, 0.7),
    ]
    # A letter over tokens still waits for its last byte.
    whole = token_ids(tokenizer, " नमस्ते world")
    assert split_words(decode, whole) == [("नमस्ते", whole[:-1]), ("world", whole[-1:])]


def test_every_token_of_random_real_token_sequences_lands_in_one_word_in_order(
    tokenizer: tokenizers.Tokenizer, decode: Callable[[list[int]], str]
) -> None:
    rng = np.random.default_rng(15)
    eot = token_id(tokenizer, "<|endoftext|>")
    spaces = [token_id(tokenizer, t) for t in ("Ġ", "Ċ", "ĉ")]
    # Whole words, lone bytes (fragments, mostly), spaces, and Hindi and Japanese text.
    common = token_ids(tokenizer, " the weather is very hot today, नमस्ते दुनिया 日本語です")
    kinds = [
        lambda: int(rng.choice(common)),
        lambda: int(rng.integers(0, 256)),
        lambda: int(rng.choice(spaces)),
        lambda: int(rng.integers(256, eot)),
    ]
    for _ in range(200):
        tokens = [kinds[k]() for k in rng.choice(4, p=[0.4, 0.2, 0.2, 0.2], size=int(rng.integers(1, 30)))]
        words = split_words(decode, tokens)
        assert bool(words) == bool(decode(tokens).strip()), tokens
        if words:
            assert [t for _, ids in words for t in ids] == tokens, tokens
        assert all(text for text, _ in words)


def reference_dtw(cost: NDArray[np.float64]) -> list[int]:
    """Dynamic time warping as written down: each cell the cheapest of diagonal, up and left
    (ties in that order), then back from the bottom-right."""
    rows, cols = cost.shape
    total = [[float("inf")] * (cols + 1) for _ in range(rows + 1)]
    total[0][0] = 0.0
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            total[i][j] = float(cost[i - 1, j - 1]) + min(
                total[i - 1][j - 1], total[i - 1][j], total[i][j - 1]
            )
    starts = [cols] * rows
    i, j = rows, cols
    while i > 0 and j > 0:
        starts[i - 1] = j - 1
        options = [total[i - 1][j - 1], total[i - 1][j], total[i][j - 1]]
        step = options.index(min(options))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return starts


def test_the_vectorised_warping_takes_the_reference_path_on_random_matrices() -> None:
    rng = np.random.default_rng(16)
    shapes = [(1, 1), (1, 9), (9, 1), (3, 3), (7, 40), (40, 7), (25, 300), (0, 4), (4, 0)]
    for rows, cols in shapes:
        for _ in range(3):
            dense = rng.standard_normal((rows, cols))
            ties = rng.integers(0, 3, (rows, cols)).astype(np.float64)  # many equal paths
            for cost in (dense, ties):
                assert dtw_starts(cost) == reference_dtw(cost), (rows, cols)


def test_the_median_filter_and_token_steps_match_scipy_and_the_reference() -> None:
    rng = np.random.default_rng(7)
    for shape in [(2, 3, 1), (2, 3, 5), (6, 20, 300)]:
        matrix = rng.standard_normal(shape)
        expected = median_filter(matrix, size=(1, 1, 7), mode="nearest")
        assert np.array_equal(median_of_7(matrix), expected)
        assert np.array_equal(
            median_of_7(np.round(matrix)), median_filter(np.round(matrix), size=(1, 1, 7), mode="nearest")
        )
    weights = rng.random((6, 21, 320)).astype(np.float32)
    matrix = weights[:, :, :250].astype(np.float64)
    matrix = (matrix - matrix.mean(axis=1, keepdims=True)) / (matrix.std(axis=1, keepdims=True) + 1e-9)
    expected_steps = reference_dtw(-median_filter(matrix, size=(1, 1, 7), mode="nearest").mean(axis=0))
    assert token_steps(weights, 250) == expected_steps


@pytest.fixture(scope="module")
def ct2_model() -> CTranslate2Model:
    assert (CT2_DIR / "model.bin").is_file(), "run `make offline-model` first (make test does)"
    return CTranslate2Model.load(
        str(CT2_DIR), "cpu", "int8", Decoding(context_s=DEFAULT_CONTEXT_S), threads=1
    )


def test_word_times_are_within_0_15_s_of_the_truth_for_nine_words_in_ten(
    ct2_model: CTranslate2Model, tmp_path: Path
) -> None:
    """Every word's timing is checked against the word spoken at its place (one word out per
    word in). What the model hears in a word is not this test's subject: int8 decodes differ
    between CPUs (on an AMD EPYC, int8 hears the isolated, synthetic "the" opening the first
    sentence as "A", probability 0.23; float32 there, and int8 on the Intel machines before,
    hear "The"), so one misheard word in the ~45 is allowed; its timing is still checked."""
    errors, misheard = [], []
    for n, sentence in enumerate(SENTENCES[:5]):
        folder = tmp_path / str(n)
        folder.mkdir()
        clip, truth = spoken_apart(sentence, folder)
        (transcript,) = ct2_model.transcribe([clip], [True])
        assert len(transcript.words) == len(truth), (transcript.text, transcript.words)
        for (said, start, end), word in zip(truth, transcript.words, strict=True):
            if said not in word.word.lower():
                misheard.append((said, word))
            assert 0 < word.probability <= 1
            errors += [abs(word.start - start), abs(word.end - end)]
    assert len(misheard) <= 1, misheard
    within = float(np.mean(np.array(errors) <= TOLERANCE_S))
    median = float(np.median(errors))
    print(
        f"word boundaries within {TOLERANCE_S} s: {within:.0%} of {len(errors)}, median error {median:.3f} s"
    )
    assert within >= 0.9
    (plain,) = ct2_model.transcribe([clip])  # not asked: no alignment pass
    assert plain.words == ()


def test_a_session_that_asks_gets_each_finals_words_in_stream_seconds(
    ct2_stack: Stack, speech: Speech
) -> None:
    stream = speech.stream(16000, (1, 3))
    code, events, stderr = run_client(ct2_stack.uri, stream.path, "--fast", "--words")
    assert code == 0, stderr
    assert events[0]["words"] is True
    for final in finals(events):
        assert 0 < final["confidence"] <= 1
        texts = [w["word"] for w in final["words"]]
        assert " ".join(texts) == final["text"]
        for word in final["words"]:
            assert final["start"] - 0.01 <= word["start"] <= word["end"] <= final["end"] + 0.01
    utterances = [w for f in finals(events) for w in f["words"]]
    first, last = stream.utterances[0][0], stream.utterances[-1][1]
    assert abs(utterances[0]["start"] - first) < TOLERANCE_S and abs(utterances[-1]["end"] - last) < 0.3
    code, events, stderr = run_client(ct2_stack.uri, stream.path, "--fast")
    assert code == 0 and all("words" not in f for f in finals(events))


def test_a_call_that_asks_gets_each_tracks_words(ct2_stack: Stack, speech: Speech) -> None:
    call = f"CA{uuid.uuid4().hex}"
    start = fixture("twilio")["start"]
    start["start"]["callSid"] = call
    stream = speech.stream(8000, (3,))
    frames = call_frames("twilio", {"inbound": encode(stream.path, "mulaw", 8000)}, 160, start=start)
    assert send_call(f"{ct2_stack.uri}/twilio?words=1", frames)[0] == 1000
    events, _ = read_events(f"{ct2_stack.uri}/calls/{call}/events")
    (final,) = [e for e in events if e["type"] == "final"]
    assert final["track"] == "inbound" and final["words"] and final["words"][0]["word"]
    assert all(w["start"] <= w["end"] for w in final["words"])


def test_dynamic_time_warping_follows_the_cheap_diagonal() -> None:
    cost = np.ones((3, 12))
    for row, (a, b) in enumerate([(0, 4), (4, 8), (8, 12)]):
        cost[row, a:b] = 0.0  # token 0 at steps 0-3, token 1 at 4-7, token 2 at 8-11
    assert dtw_starts(cost) == [0, 4, 8]


def test_the_transformers_backend_times_words_as_well(tmp_path: Path) -> None:
    model = WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, Decoding(context_s=DEFAULT_CONTEXT_S))
    errors = []
    for n, sentence in enumerate(SENTENCES[1:4]):
        folder = tmp_path / str(n)
        folder.mkdir()
        clip, truth = spoken_apart(sentence, folder)
        (transcript,) = model.transcribe([clip], [True])
        assert len(transcript.words) == len(truth), transcript.words
        for (said, start, end), word in zip(truth, transcript.words, strict=True):
            assert said in word.word.lower() and 0 < word.probability <= 1
            errors += [abs(word.start - start), abs(word.end - end)]
    within = float(np.mean(np.array(errors) <= TOLERANCE_S))
    print(f"transformers: word boundaries within {TOLERANCE_S} s: {within:.0%} of {len(errors)}")
    assert within >= 0.9
    assert model.transcribe([clip])[0].words == ()
