"""The CTranslate2 backend: the ``SpeechModel`` interface on CTranslate2's Whisper.

Loads a CTranslate2 Whisper directory (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.txt``: what `make offline-model` writes to ``models/whisper-base-ct2``); a
transformers model (a Hub id such as Oriserve's, or a local directory) is converted once into a
cache. A batch is transcribed in one ``generate`` call over the context window that fits it:
``language`` and ``task`` forced, no timestamps, the same ``max_new_tokens`` bound and beam size
as the transformers backend, and Whisper's no-speech probability from the same decoder pass. It
does not import torch. int8 weights make it about twice as fast on CPU at the same word error
rate (see ``bench/backends.py``).

The log-mel features are computed here in numpy (the same as transformers'
``WhisperFeatureExtractor``): that keeps torch's thread pool out of the hot path,
so it does not compete with CTranslate2's for the cores.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ctranslate2  # type: ignore[import-untyped]
import numpy as np
import tokenizers
from numpy.typing import NDArray

from services.transcriber.interface import (
    FRAMES_PER_SECOND,
    MAX_PROMPT_TOKENS,
    WINDOW_S,
    Clips,
    Decoding,
    ModelLoadError,
    Transcript,
    context_frames,
    doubtful,
)
from services.transcriber.words import Word, clip_words

log = logging.getLogger("transcriber.model")

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160


def ct2_max_length(new_tokens: int) -> int:
    """The ``max_length`` that lets CTranslate2's Whisper generate ``new_tokens`` tokens.

    CTranslate2 decodes at most ``max_length / 2`` steps after the prompt (like
    OpenAI's ``sample_len = n_text_ctx // 2``), so the bound is passed doubled.
    """
    return 2 * new_tokens


class LogMel:
    """Whisper's log-mel spectrogram of clips padded to ``frames`` frames (3000: 30 s), in numpy."""

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

    def __call__(self, batch: Clips, n_frames: int) -> NDArray[np.float32]:
        from scipy import fft

        samples = n_frames * HOP
        out = np.empty((len(batch), self.filters.shape[1], n_frames), np.float32)
        for i, clip in enumerate(batch):
            audio = np.zeros(samples, np.float32)
            audio[: min(len(clip), samples)] = clip[:samples]
            padded = np.pad(audio, N_FFT // 2, mode="reflect")  # torch.stft(center=True)
            frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
            power = np.abs(fft.rfft(frames * self.window, axis=-1)) ** 2
            mel = np.log10(np.maximum(power @ self.filters, 1e-10)).T
            out[i] = (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0
        return out


def ct2_directory(model_id: str) -> Path:
    """``model_id`` as a CTranslate2 directory: itself when it is one (``model.bin``), else its
    conversion from a transformers Whisper (a Hub id or a local directory), made once into
    ``$CT2_CACHE`` (default ``$HF_HOME/ctranslate2``) and reused. Conversion needs torch and
    transformers, and the Hub for a Hub id: it is a one-time build step, not part of serving."""
    path = Path(model_id)
    if (path / "model.bin").is_file():
        return path
    hf_home = Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser()
    cache = Path(os.environ.get("CT2_CACHE") or hf_home / "ctranslate2")
    target = cache / re.sub(r"[^A-Za-z0-9._-]+", "--", model_id.strip().strip("/"))
    if (target / "model.bin").is_file():
        return target
    log.info("converting %s to CTranslate2 into %s (once)", model_id, target)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        from ctranslate2.converters import TransformersConverter  # type: ignore[import-untyped]

        TransformersConverter(model_id, copy_files=["tokenizer.json"]).convert(str(partial), force=True)
    except Exception as exc:  # the converter raises whatever transformers or the Hub raise
        shutil.rmtree(partial, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "is not a CTranslate2 Whisper directory" if path.exists() else "is no directory here"
        raise ModelLoadError(
            f"{model_id!r} {what}, and converting it failed: {first} "
            "(no Hugging Face Hub access? `make offline-model` builds models/whisper-base-ct2)"
        ) from None
    try:
        partial.rename(target)
    except OSError:  # another transcriber converted it at the same time
        shutil.rmtree(partial, ignore_errors=True)
    return target


class CTranslate2Model:
    """Whisper on CTranslate2: one batched ``generate`` per batch of clips."""

    def __init__(self, model: Any, tokenizer: Any, decoding: Decoding) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decoding = decoding
        language, task = decoding.language, decoding.task
        self.mel = LogMel(int(model.n_mels))
        self.eot = self._token("<|endoftext|>")
        self.previous = self._token("<|startofprev|>")
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
        cls, model_dir: str, device: str, compute_type: str, decoding: Decoding, threads: int = 0
    ) -> CTranslate2Model:

        started = time.perf_counter()
        path = ct2_directory(model_dir)
        if not (path / "tokenizer.json").is_file():
            raise ModelLoadError(f"{str(path)!r} has no tokenizer.json: not a CTranslate2 Whisper directory")
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
        return cls(model, tokenizer, decoding)

    def start(self, prompt: str) -> list[int]:
        """The decoder's first tokens: the session's prompt, if any, as the previous text
        (its last MAX_PROMPT_TOKENS tokens, as Whisper was trained), then the task."""
        if not prompt:
            return self.prompt
        ids = self.tokenizer.encode(" " + prompt, add_special_tokens=False).ids[-MAX_PROMPT_TOKENS:]
        return [self.previous, *ids, *self.prompt]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def features(self, batch: Clips) -> NDArray[np.float32]:
        """The batch's log-mel features over the context window that fits its longest clip."""
        seconds = max(len(clip) for clip in batch) / SAMPLE_RATE
        return self.mel(batch, context_frames(seconds, self.decoding.context_s))

    def transcribe(
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
    ) -> list[Transcript]:
        if not batch:
            return []
        mel = self.features(batch)
        encoded = self.encode(mel)
        starts = [self.start(prompts[n] if n < len(prompts) else "") for n in range(len(batch))]
        budget = self.decoding.token_budget(max(len(clip) for clip in batch) / SAMPLE_RATE)
        results = self.generate(encoded, starts, list(range(len(batch))), budget)
        texts = [[i for i in result.sequences_ids[0] if i < self.eot] for result in results]
        if mel.shape[-1] < WINDOW_S * FRAMES_PER_SECOND:
            said = zip(texts, results, strict=True)
            again = [n for n, (ids, r) in enumerate(said) if doubtful(self.decode(ids), r.no_speech_prob)]
            if again:
                log.info(
                    "%d of %d windowed decodes doubtful: decoded again over 30 s", len(again), len(batch)
                )
                encoded = self.encode(self.mel(batch, WINDOW_S * FRAMES_PER_SECOND))
                for n, result in zip(again, self.generate(encoded, starts, again, budget), strict=True):
                    results[n], texts[n] = result, [i for i in result.sequences_ids[0] if i < self.eot]
        wanted = [ids if n < len(words) and words[n] else [] for n, ids in enumerate(texts)]
        timed = self.align(encoded, batch, wanted)
        return [
            Transcript(self.decode(ids).strip(), float(result.no_speech_prob), tuple(words))
            for ids, result, words in zip(texts, results, timed, strict=True)
        ]

    def encode(self, mel: NDArray[np.float32]) -> NDArray[Any]:
        """The encoder's output for ``mel``, once: generating, decoding again and aligning all
        start from it (each of CTranslate2's calls given the features would run the encoder)."""
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
        return np.asarray(self.model.encode(features, to_cpu=True))

    def generate(
        self, encoded: NDArray[Any], starts: list[list[int]], members: list[int], budget: int
    ) -> list[Any]:
        """CTranslate2's results for clips ``members`` of ``encoded``, in that order. It needs
        <|startoftranscript|> at one position in a batch: one call per prompt length."""
        groups: dict[int, list[int]] = {}
        for n in members:
            groups.setdefault(len(starts[n]), []).append(n)
        results: dict[int, Any] = {}
        for group in groups.values():
            generated = self.model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[group])),
                [starts[n] for n in group],
                beam_size=self.decoding.beam_size,
                max_length=ct2_max_length(budget),
                return_no_speech_prob=True,
            )
            results.update(zip(group, generated, strict=True))
        return [results[n] for n in members]

    def align(self, encoded: NDArray[Any], batch: Clips, texts: list[list[int]]) -> list[list[Word]]:
        """Each clip's words with their times (none for a clip without ``texts``): CTranslate2's
        ``align`` (dynamic time warping over the alignment heads' cross-attention), one more
        decoder pass over the tokens chosen, on the encoder output already made."""
        out: list[list[Word]] = [[] for _ in batch]
        spoken = [n for n, ids in enumerate(texts) if ids]
        if not spoken:
            return out
        aligned = self.model.align(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded[spoken])),
            self.prompt[:-1],  # without <|notimestamps|>
            [texts[n] for n in spoken],
            [len(batch[n]) // HOP for n in spoken],
        )
        for n, result in zip(spoken, aligned, strict=True):
            text_steps = np.array([pair[0] for pair in result.alignments])
            time_steps = np.array([pair[1] for pair in result.alignments])
            starts = time_steps[np.concatenate([[True], np.diff(text_steps) != 0])]  # each token's step
            steps, probabilities = [int(t) for t in starts], list(result.text_token_probs)
            out[n] = clip_words(self.decode, texts[n], steps, probabilities, batch[n], SAMPLE_RATE)
        return out
