"""The model interface both backends implement: ``transcribe(batch) -> transcripts``.

``services.transcriber.model`` (transformers + torch) and ``services.transcriber.ct2_model``
(CTranslate2, no torch) implement it; the worker and the benches see only this.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from services.transcriber.guard import NO_SPEECH_THRESHOLD
from services.transcriber.words import Word

log = logging.getLogger("transcriber.model")

# Fast speech runs at ~4 words/s, under 2 tokens a word: 10 tokens/s leaves room
# without letting a loop run to Whisper's 448-token limit.
TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 16
MAX_NEW_TOKENS = 440
# A session's prompt (its vocabulary) keeps its last this many tokens: Whisper's context holds 448,
# half of it for the previous text, as OpenAI's decoding does.
MAX_PROMPT_TOKENS = 223


# Whisper's encoder was trained on 30 s windows of 3000 log-mel frames (100 a second), and pads
# every clip to that. Most segments are a few seconds long, so most of that work is padding: a
# segment is instead padded to the smallest of these window lengths (seconds) that holds it with
# CONTEXT_MARGIN_S to spare. The default was chosen by bench/context.py (docs/performance.md, "Context").
WINDOW_S = 30
FRAMES_PER_SECOND = 100
DEFAULT_CONTEXT_S = (10, 15, 20, 30)
CONTEXT_MARGIN_S = 1.0


def context_frames(seconds: float, context_s: Sequence[int]) -> int:
    """Encoder input frames for a batch whose longest clip lasts ``seconds``."""
    fits = [c for c in context_s if c >= seconds + CONTEXT_MARGIN_S]
    return min(fits, default=WINDOW_S) * FRAMES_PER_SECOND


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why in one line."""


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    words: tuple[Word, ...] = ()  # with times from the clip's start, when the backend aligns


# A batch: 16 kHz float32 mono clips, each under 30 s.
Clips = Sequence[NDArray[np.float32]]


class SpeechModel(Protocol):
    def transcribe(
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
    ) -> list[Transcript]:
        """Transcribe 16 kHz float32 mono clips, each under 30 s; ``words[i]``: time clip i's
        words too; ``prompts[i]``: words to expect in clip i (Whisper's initial prompt). A
        backend that cannot leaves the words empty and the prompts unused."""
        ...


def max_new_tokens(seconds: float) -> int:
    return min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + int(seconds * TOKENS_PER_SECOND))


@dataclass(frozen=True)
class Decoding:
    """How the backends decode: the same settings for both."""

    language: str = "en"
    task: str = "transcribe"
    beam_size: int = 1
    context_s: tuple[int, ...] = (WINDOW_S,)  # encoder window lengths; (30,) is Whisper's own
    max_tokens: int = MAX_NEW_TOKENS  # a cap below the length rule (bench/gpu.py forces lengths)

    def token_budget(self, seconds: float) -> int:
        """Most tokens to generate for a batch whose longest clip lasts ``seconds``."""
        return min(max_new_tokens(seconds), self.max_tokens)


# A decode over a window shorter than 30 s is doubtful, and decoded again over the full window,
# when it would reach the client as nothing (no text, or Whisper's no-speech probability over the
# guard's threshold: the voice detectors already heard speech in it) or loops (text that zlib
# compresses over 2.4 times: OpenAI's transcribe.py retries those too). Short windows save
# encoder time, but the model was trained on 30 s ones: on bench/evalset one real clip gave
# nothing over its 10 s window and a sentence over 30 s. Whisper's other retry rule (average
# log-probability under -1) is not used: whisper-base on Hindi audio is that unsure on half the
# clips, and decoding them again gave one "Thank you." more and no fewer errors.
DOUBTFUL_COMPRESSION = 2.4


def doubtful(text: str, no_speech_prob: float) -> bool:
    """A windowed decode worth decoding again over the full window: nothing, or a loop."""
    encoded = text.strip().encode()
    if not encoded or no_speech_prob > NO_SPEECH_THRESHOLD:
        return True
    return len(encoded) / len(zlib.compress(encoded)) > DOUBTFUL_COMPRESSION


def warm_up(model: SpeechModel) -> None:
    """Run one real pass so the first segment does not pay for lazy initialisation."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    model.transcribe([(rng.standard_normal(16000) * 0.01).astype(np.float32)])
    log.info("warm-up took %.2f s", time.perf_counter() - started)
