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
    MAX_PROMPT_TOKENS,
    Clips,
    Decoding,
    ModelLoadError,
    Transcript,
    context_frames,
)
from services.transcriber.words import Word, clip_words, token_steps

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
        self.attention = model.config._attn_implementation
        self.eot_token = int(config.eos_token_id)
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

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """A session's prompt as the previous text (its last MAX_PROMPT_TOKENS tokens)."""
        ids = self.processor.tokenizer.get_prompt_ids(prompt, return_tensors="pt")
        return torch.cat([ids[:1], ids[1:][-MAX_PROMPT_TOKENS:]]).to(self.device)

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
        self, batch: Clips, words: Sequence[bool] = (), prompts: Sequence[str] = ()
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
        # One generate per prompt: transformers takes one prompt for a whole batch.
        groups: dict[str, list[int]] = {}
        for n in range(len(batch)):
            groups.setdefault(prompts[n] if n < len(prompts) else "", []).append(n)
        texts = [""] * len(batch)
        tokens: list[list[int]] = [[] for _ in batch]
        for prompt, members in groups.items():
            options = {"prompt_ids": self.prompt_ids(prompt)} if prompt else {}
            sequences = self.model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state[members]),
                language=self.decoding.language,
                task=self.decoding.task,
                do_sample=False,
                num_beams=self.decoding.beam_size,
                max_new_tokens=self.decoding.token_budget(seconds),
                **options,
            )
            decoded = self.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
            for n, text, sequence in zip(members, decoded, sequences.tolist(), strict=True):
                texts[n] = text
                tokens[n] = self.text_tokens(sequence)
        timed = [
            self.align(encoded.last_hidden_state[n : n + 1], tokens[n], batch[n])
            if n < len(words) and words[n] and tokens[n]
            else []
            for n in range(len(batch))
        ]
        return [
            Transcript(text.strip(), float(p), tuple(w))
            for text, p, w in zip(texts, no_speech, timed, strict=True)
        ]

    def text_tokens(self, sequence: list[int]) -> list[int]:
        """The tokens of the text in a generated sequence: after the task, before end of text."""
        task_end = self.no_speech_token + 1  # <|notimestamps|>, the task's last token
        after = sequence[sequence.index(task_end) + 1 :] if task_end in sequence else sequence
        return [token for token in after if token < self.eot_token]

    def task_tokens(self) -> list[int]:
        """What the decoder starts from: <|startoftranscript|>, the language, the task, <|notimestamps|>."""
        config = self.model.generation_config
        language = int(config.lang_to_id[f"<|{self.decoding.language}|>"])
        return [
            self.start_token,
            language,
            int(config.task_to_id[self.decoding.task]),
            self.no_speech_token + 1,
        ]

    def align(self, encoded: torch.Tensor, ids: list[int], clip: NDArray[np.float32]) -> list[Word]:
        """The words of text tokens ``ids`` with their times in ``clip``: one decoder pass over the
        task tokens and the text; its alignment heads' cross-attention through dynamic time warping
        (``services.transcriber.words``), the boundaries moved onto the audio's pauses; each
        word's confidence from the probabilities that pass gives its tokens."""
        tokenizer = self.processor.tokenizer
        start = self.task_tokens()
        tokens = torch.tensor([[*start, *ids, self.eot_token]], device=self.device)
        # SDPA (the default, and the faster for decoding) returns no attention weights.
        self.model.set_attn_implementation("eager")
        try:
            output = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                decoder_input_ids=tokens,
                output_attentions=True,
            )
        finally:
            self.model.set_attn_implementation(self.attention)
        # Rows from the last task token (it predicts the first word) to the last text token
        # (it predicts end of text): one per text token, then end of text.
        first, last = len(start) - 1, len(start) + len(ids)
        heads = self.model.generation_config.alignment_heads
        weights = torch.stack([output.cross_attentions[layer][0, head] for layer, head in heads])
        steps = token_steps(weights[:, first:last].float().cpu().numpy(), len(clip) // 320)
        probabilities = output.logits[0, first : last - 1].float().softmax(-1)
        chosen = probabilities[torch.arange(len(ids)), torch.tensor(ids)].tolist()
        return clip_words(lambda part: str(tokenizer.decode(part)), ids, steps, chosen, clip, 16000)
