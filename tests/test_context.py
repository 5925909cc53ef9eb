"""Context windows: the encoder sees the smallest window that holds a segment, not always 30 s.

Real whisper-base weights (`make offline-model`), both backends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.stack import MODEL_DIR, ROOT
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.interface import DEFAULT_CONTEXT_S, Decoding, context_frames, doubtful
from services.transcriber.model import WhisperModel
from tools.speech import Speech, wer

CT2_DIR = ROOT / "models" / "whisper-base-ct2"


def test_the_smallest_window_that_holds_the_longest_clip_with_a_margin() -> None:
    assert context_frames(2.0, (10, 20, 30)) == 1000
    assert context_frames(9.5, (10, 20, 30)) == 2000  # 1 s margin
    assert context_frames(25.0, (10, 20, 30)) == 3000
    assert context_frames(29.9, (10, 20, 30)) == 3000  # never more than Whisper's window
    assert context_frames(2.0, (30,)) == 3000


@pytest.fixture(scope="module")
def transformers_model() -> WhisperModel:
    torch.set_num_threads(2)
    return WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, Decoding(context_s=DEFAULT_CONTEXT_S))


def test_our_encoder_pass_is_transformers_own_at_30_s(transformers_model: WhisperModel) -> None:
    features = torch.randn(2, 80, 3000)
    with torch.inference_mode():
        ours = transformers_model.encode(features).last_hidden_state
        theirs = transformers_model.model.get_encoder()(features).last_hidden_state
    assert torch.equal(ours, theirs)


def sentences(speech: Speech) -> tuple[list[np.ndarray], tuple[str, ...]]:
    stream = speech.stream(16000, (0, 1, 2, 3, 4, 5))
    return stream.clips(0.3), stream.texts


def test_both_backends_transcribe_in_short_windows(transformers_model: WhisperModel, speech: Speech) -> None:
    clips, texts = sentences(speech)
    assert len(clips[-1]) / 16000 > 9  # the long sentence takes the 20 s window
    ct2 = CTranslate2Model.load(str(CT2_DIR), "cpu", "int8", Decoding(context_s=DEFAULT_CONTEXT_S), 2)
    for model in (transformers_model, ct2):
        got = [t.text for clip in clips for t in model.transcribe([clip])]
        assert wer(" ".join(texts), " ".join(got)) <= 0.1, got
        for text, clip_text in zip(texts, got, strict=True):
            assert wer(text, clip_text) <= 0.25, (text, clip_text)


def test_an_empty_or_looping_windowed_decode_is_doubtful_and_a_sentence_is_not() -> None:
    """What the CTranslate2 backend decodes again over the full 30 s window (bench/fidelity.py
    measures what it changes on real speech)."""
    assert doubtful("", 0.0) and doubtful("   ", 0.0)
    assert doubtful("Could you send me the address?", 0.9)  # what the guard would drop as no speech
    assert doubtful("Ah, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha, ha.", 0.0)
    assert not doubtful("Could you send me the address of the new office?", 0.1)
    assert not doubtful("haan ji", 0.2)
