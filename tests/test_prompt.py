"""A session's vocabulary (Whisper's initial prompt): bounded, carried by every job, changed
mid-session by ``configure``, and a rare word fixed by it: end to end on whisper-base in
CTranslate2, and in-process on the transformers backend."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.sync.client import connect

from services import metrics
from services.ingest.config import parse_args
from services.ingest.core.channels import Channels
from services.ingest.core.inputs import Configure
from services.ingest.protocols.native import parse_text
from services.metrics import IngestMetrics
from services.protocol import (
    PROMPT_MAX_CHARS,
    ProtocolError,
    SessionParams,
    parse_query,
)
from services.stack import MODEL_DIR, Stack
from services.transcriber.interface import DEFAULT_CONTEXT_S, Decoding
from services.transcriber.model import WhisperModel
from tests.helpers import finals, run_client
from tests.test_segmenter import loud, silence, tone_pcm
from tools.speech import espeak

SAID = "My Hinglish transcript from Zomato is wrong."  # whisper-base hears "Zomago"


def test_the_prompt_is_bounded_and_configure_changes_it() -> None:
    assert parse_query("prompt=Zomato%2C%20Swiggy").prompt == "Zomato, Swiggy"
    with pytest.raises(ProtocolError) as refused:
        parse_query("prompt=" + "x" * (PROMPT_MAX_CHARS + 1))
    assert refused.value.code == "bad_parameter" and "at most" in refused.value.message
    assert parse_text('{"type": "configure", "prompt": "Kotak"}') == Configure("Kotak")
    with pytest.raises(ProtocolError, match="string 'prompt'"):
        parse_text('{"type": "configure", "prompt": 5}')


def test_every_job_carries_the_prompt_in_force_when_it_was_made() -> None:
    config = parse_args(["--silence-ms", "300", "--min-speech-ms", "200", "--eager-ms", "0"])
    params = SessionParams(16000, None, prompt="Zomato")
    session = Channels("s1", "swift", params, config, IngestMetrics(metrics.new_registry()), 0.0, vad=loud)
    utterance = tone_pcm(0.8, 16000) + silence(0.6, 16000)
    session.audio(utterance, 0.0)
    session.configure("Swiggy")
    session.audio(utterance, 0.0)
    assert [job.prompt for job in session.jobs_to_queue()] == ["Zomato", "Swiggy"]


@pytest.fixture(scope="module")
def rare_word(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prompt")
    samples = espeak(SAID, folder / "said.wav")
    gap = np.zeros(int(0.8 * 22050), np.int16)
    path = folder / "call.wav"
    sf.write(path, np.concatenate([gap, samples, gap]), 22050, subtype="PCM_16")
    resampled = folder / "call-16k.wav"
    subprocess.run(["sox", "-D", str(path), "-r", "16000", str(resampled)], check=True)
    return resampled


def test_a_rare_word_comes_out_right_with_the_prompt(ct2_stack: Stack, rare_word: Path) -> None:
    code, events, stderr = run_client(ct2_stack.uri, rare_word, "--fast")
    assert code == 0, stderr
    without = " ".join(f["text"] for f in finals(events))
    code, events, stderr = run_client(
        ct2_stack.uri, rare_word, "--fast", "--prompt", "Zomato, Swiggy, Blinkit"
    )
    assert code == 0, stderr
    with_prompt = " ".join(f["text"] for f in finals(events))
    print(f"without a prompt: {without!r}; with one: {with_prompt!r}")
    assert "Zomato" not in without and "Zomato" in with_prompt


def test_configure_mid_session_applies_to_the_next_segments(ct2_stack: Stack, rare_word: Path) -> None:
    pcm = sf.read(rare_word, dtype="int16")[0].tobytes()
    events: list[dict[str, Any]] = []
    with connect(f"{ct2_stack.uri}/?sample_rate=16000", open_timeout=10) as ws:
        events.append(json.loads(ws.recv(timeout=10)))
        for frame in (pcm, json.dumps({"type": "configure", "prompt": "Zomato"}), pcm, "EOF"):
            ws.send(frame)
        while events[-1]["type"] != "done":
            events.append(json.loads(ws.recv(timeout=60)))
    first, second = (f["text"] for f in finals(events))
    assert "Zomato" not in first and "Zomato" in second


def test_the_transformers_backend_takes_the_prompt_too(rare_word: Path) -> None:
    model = WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, Decoding(context_s=DEFAULT_CONTEXT_S))
    clip = sf.read(rare_word, dtype="float32")[0]
    plain, prompted, again = model.transcribe([clip, clip, clip], prompts=["", "Zomato, Swiggy", ""])
    assert "Zomato" not in plain.text and "Zomato" in prompted.text
    assert again.text == plain.text  # one clip's prompt does not reach another in the batch
