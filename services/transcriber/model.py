"""The transformers + torch backend of ``services.transcriber.interface.SpeechModel``.

``WhisperModel`` runs one batched feature extraction (on the model's device), one encoder
pass over the context window that fits the batch, one decoder step for Whisper's no-speech
probability, and one ``generate`` that reuses the encoder output, with ``max_new_tokens``
bounded by the audio's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from transformers.modeling_outputs import BaseModelOutput

from services.transcriber.interface import (
    Decoding,
    ModelLoadError,
    Transcript,
    context_frames,
)

log = logging.getLogger("transcriber.model")


class WhisperModel:
    def __init__(self, model: Any, processor: Any, device: str, dtype: torch.dtype, decoding: Decoding):
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.decoding = decoding
        config = model.generation_config
        self.start_token = int(config.decoder_start_token_id)
        # Whisper's no-speech token sits just before <|notimestamps|>.
        self.no_speech_token = int(config.no_timestamps_token_id) - 1

    @classmethod
    def load(cls, model_id: str, device: str, dtype: torch.dtype, decoding: Decoding) -> WhisperModel:
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
        return cls(model, processor, device, dtype, decoding)

    def encode(self, features: torch.Tensor) -> BaseModelOutput:
        """The encoder's output for features of any length up to 30 s.

        transformers' ``WhisperEncoder.forward`` accepts only 3000 frames; this is the same
        computation (convolutions, positional embeddings, layers, final norm) with the
        positional embeddings cut to the input's length. tests/test_context.py checks that
        it equals ``forward`` at 3000 frames.
        """
        encoder = self.model.get_encoder()
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        return BaseModelOutput(last_hidden_state=encoder.layer_norm(hidden))

    @torch.inference_mode()
    def transcribe(
        self,
        batch: Sequence[NDArray[np.float32]],
        words: Sequence[bool] = (),
        prompts: Sequence[str] = (),
    ) -> list[Transcript]:
        if not batch:
            return []
        # The log-mel STFT runs in torch on the model's device: on a GPU nothing of the hot path
        # but the decoded text comes back to the CPU.
        seconds = max(len(clip) for clip in batch) / 16000
        frames = context_frames(seconds, self.decoding.context_s)
        features = self.processor.feature_extractor(
            list(batch), sampling_rate=16000, return_tensors="pt", device=self.device, max_length=frames * 160
        ).input_features.to(self.device, self.dtype)
        encoded = self.encode(features)
        first = torch.full((len(batch), 1), self.start_token, device=self.device)
        logits = self.model(encoder_outputs=encoded, decoder_input_ids=first).logits[:, -1].float()
        no_speech = logits.softmax(-1)[:, self.no_speech_token].tolist()
        sequences = self.model.generate(
            encoder_outputs=encoded,
            language=self.decoding.language,
            task=self.decoding.task,
            do_sample=False,
            num_beams=self.decoding.beam_size,
            max_new_tokens=self.decoding.token_budget(seconds),
        )
        texts = self.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [Transcript(text.strip(), float(p)) for text, p in zip(texts, no_speech, strict=True)]
