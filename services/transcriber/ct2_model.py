"""The CTranslate2 backend: the ``SpeechModel`` interface on CTranslate2's Whisper.

Loads a CTranslate2 Whisper directory (``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``: what `make offline-model` writes to
``models/whisper-base-ct2``, or what ``ct2-transformers-converter`` makes of a Hub
model) and transcribes a batch in one ``generate`` call: greedy, ``language`` and
``task`` forced, no timestamps, the same ``max_new_tokens`` bound as the
transformers backend, and Whisper's no-speech probability from the same decoder
step. int8 weights make it about twice as fast on CPU at the same word error rate
(see ``bench/backends.py``).

The log-mel features are computed here in numpy (the same as transformers'
``WhisperFeatureExtractor``): that keeps torch's thread pool out of the hot path,
so it does not compete with CTranslate2's for the cores.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctranslate2  # type: ignore[import-untyped]
import numpy as np
import tokenizers
from numpy.typing import NDArray

from services.transcriber.model import ModelLoadError, Transcript, max_new_tokens

log = logging.getLogger("transcriber.model")

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
CHUNK_SAMPLES = 30 * SAMPLE_RATE  # Whisper's encoder always sees 30 s
N_FRAMES = CHUNK_SAMPLES // HOP


def ct2_max_length(new_tokens: int) -> int:
    """The ``max_length`` that lets CTranslate2's Whisper generate ``new_tokens`` tokens.

    CTranslate2 decodes at most ``max_length / 2`` steps after the prompt (like
    OpenAI's ``sample_len = n_text_ctx // 2``), so the bound is passed doubled.
    """
    return 2 * new_tokens


class LogMel:
    """Whisper's log-mel spectrogram of clips padded to 30 s, in numpy."""

    def __init__(self, n_mels: int) -> None:
        from transformers.audio_utils import mel_filter_bank

        self.filters: NDArray[np.float32] = mel_filter_bank(
            num_frequency_bins=N_FFT // 2 + 1,
            num_mel_filters=n_mels,
            min_frequency=0.0,
            max_frequency=SAMPLE_RATE / 2,
            sampling_rate=SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        ).astype(np.float32)
        n = np.arange(N_FFT)
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)  # periodic Hann

    def __call__(self, batch: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
        from scipy import fft

        out = np.empty((len(batch), self.filters.shape[1], N_FRAMES), np.float32)
        for i, clip in enumerate(batch):
            audio = np.zeros(CHUNK_SAMPLES, np.float32)
            audio[: min(len(clip), CHUNK_SAMPLES)] = clip[:CHUNK_SAMPLES]
            padded = np.pad(audio, N_FFT // 2, mode="reflect")  # torch.stft(center=True)
            frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:N_FRAMES]
            power = np.abs(fft.rfft(frames * self.window, axis=-1)) ** 2
            mel = np.log10(np.maximum(power @ self.filters, 1e-10)).T
            out[i] = (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0
        return out


class CTranslate2Model:
    """Whisper on CTranslate2: one batched ``generate`` per batch of clips."""

    def __init__(self, model: Any, tokenizer: Any, language: str, task: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mel = LogMel(int(model.n_mels))
        self.eot = self._token("<|endoftext|>")
        prompt = [self._token("<|startoftranscript|>")]
        if model.is_multilingual:
            prompt += [self._token(f"<|{language}|>"), self._token(f"<|{task}|>")]
        self.prompt = [*prompt, self._token("<|notimestamps|>")]

    def _token(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelLoadError(f"the model's tokenizer has no {token} token (wrong --language?)")
        return int(token_id)

    @classmethod
    def load(
        cls, model_dir: str, device: str, compute_type: str, language: str, task: str, threads: int = 0
    ) -> CTranslate2Model:

        started = time.perf_counter()
        path = Path(model_dir)
        if not (path / "model.bin").is_file() or not (path / "tokenizer.json").is_file():
            raise ModelLoadError(
                f"{model_dir!r} is not a CTranslate2 Whisper directory (model.bin, tokenizer.json): "
                "build one with `make offline-model` (models/whisper-base-ct2), or convert a Hub model "
                "with ct2-transformers-converter"
            )
        try:
            model = ctranslate2.models.Whisper(
                str(path), device=device, compute_type=compute_type, intra_threads=threads
            )
            tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except (RuntimeError, ValueError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load CTranslate2 model {model_dir!r}: {first}") from None
        log.info(
            "loaded %s with CTranslate2 on %s/%s in %.1f s",
            model_dir,
            device,
            compute_type,
            time.perf_counter() - started,
        )
        return cls(model, tokenizer, language, task)

    def warm_up(self) -> None:
        """Run one real pass so the first segment does not pay for lazy initialisation."""
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        self.transcribe([(rng.standard_normal(16000) * 0.01).astype(np.float32)])
        log.info("warm-up took %.2f s", time.perf_counter() - started)

    def features(self, batch: Sequence[NDArray[np.float32]]) -> Any:
        """The batch's log-mel features as a CTranslate2 array (moved to the model's device by it)."""
        return ctranslate2.StorageView.from_array(self.mel(batch))

    def transcribe(self, batch: Sequence[NDArray[np.float32]]) -> list[Transcript]:
        if not batch:
            return []
        results = self.model.generate(
            self.features(batch),
            [self.prompt] * len(batch),
            beam_size=1,
            max_length=ct2_max_length(max_new_tokens(max(len(clip) for clip in batch) / SAMPLE_RATE)),
            return_scores=True,
            return_no_speech_prob=True,
        )
        transcripts = []
        for result in results:
            ids = [i for i in result.sequences_ids[0] if i < self.eot]
            text: str = self.tokenizer.decode(ids)
            # Scores are the cumulative log-probability divided by the length (length_penalty 1).
            avg = float(result.scores[0]) if result.scores else 0.0
            transcripts.append(Transcript(text.strip(), float(result.no_speech_prob), avg))
        return transcripts
