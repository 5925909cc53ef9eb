"""The speech model behind a small interface: ``transcribe(batch) -> transcripts``.

``WhisperModel`` is the transformers + torch implementation. It runs one
batched feature extraction, one encoder pass, one decoder step for Whisper's
no-speech probability, and one greedy ``generate`` that reuses the encoder
output, with ``max_new_tokens`` bounded by the audio's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

log = logging.getLogger("transcriber.model")

# Fast speech runs at ~4 words/s, under 2 tokens a word: 10 tokens/s leaves room
# without letting a loop run to Whisper's 448-token limit.
TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 16
MAX_NEW_TOKENS = 440


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why in one line."""


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float


class SpeechModel(Protocol):
    def transcribe(self, batch: Sequence[NDArray[np.float32]]) -> list[Transcript]:
        """Transcribe 16 kHz float32 mono clips, each under 30 s."""
        ...


def max_new_tokens(seconds: float) -> int:
    return min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + int(seconds * TOKENS_PER_SECOND))


class WhisperModel:
    def __init__(self, model: Any, processor: Any, device: str, dtype: torch.dtype, language: str, task: str):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.language = language
        self.task = task
        config = model.generation_config
        self.start_token = int(config.decoder_start_token_id)
        # Whisper's no-speech token sits just before <|notimestamps|>.
        self.no_speech_token = int(config.no_timestamps_token_id) - 1

    @classmethod
    def load(cls, model_id: str, device: str, dtype: torch.dtype, language: str, task: str) -> WhisperModel:
        import transformers

        transformers.logging.set_verbosity_error()
        started = time.perf_counter()
        try:
            processor = transformers.WhisperProcessor.from_pretrained(model_id)
            model = transformers.WhisperForConditionalGeneration.from_pretrained(model_id, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"cannot load model {model_id!r}: {first} "
                "(no Hugging Face Hub access? build a local one with `make offline-model` "
                "and pass --model-id models/whisper-base)"
            ) from None
        model.to(device).eval()
        log.info("loaded %s on %s/%s in %.1f s", model_id, device, dtype, time.perf_counter() - started)
        return cls(model, processor, device, dtype, language, task)

    def warm_up(self) -> None:
        """Run one real pass so the first segment does not pay for lazy initialisation."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        self.transcribe([(rng.standard_normal(16000) * 0.01).astype(np.float32)])
        log.info("warm-up took %.2f s", time.perf_counter() - started)

    @torch.inference_mode()
    def transcribe(self, batch: Sequence[NDArray[np.float32]]) -> list[Transcript]:
        if not batch:
            return []
        # The log-mel STFT runs in torch on the model's device: on a GPU nothing of the hot path
        # but the decoded text comes back to the CPU.
        features = self.processor.feature_extractor(
            list(batch), sampling_rate=16000, return_tensors="pt", device=self.device
        ).input_features.to(self.device, self.dtype)
        encoded = self.model.get_encoder()(features)
        first = torch.full((len(batch), 1), self.start_token, device=self.device)
        logits = self.model(encoder_outputs=encoded, decoder_input_ids=first).logits[:, -1].float()
        no_speech = logits.softmax(-1)[:, self.no_speech_token].tolist()
        out = self.model.generate(
            encoder_outputs=encoded,
            language=self.language,
            task=self.task,
            do_sample=False,
            num_beams=1,
            max_new_tokens=max_new_tokens(max(len(clip) for clip in batch) / 16000),
            return_dict_in_generate=True,
            output_scores=True,
        )
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        generated = out.sequences[:, -scores.shape[1] :]
        eot = self.model.generation_config.eos_token_id
        texts = self.processor.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        results = []
        for row, text in enumerate(texts):
            # Tokens up to and including the first end-of-text count; padding after it does not.
            ends = (generated[row] == eot).nonzero()
            length = int(ends[0]) + 1 if len(ends) else generated.shape[1]
            avg = float(scores[row, :length].float().mean()) if length else 0.0
            results.append(Transcript(text.strip(), float(no_speech[row]), avg))
        return results
