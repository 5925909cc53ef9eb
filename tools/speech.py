"""Test speech for the tests and benches: espeak-ng sentences at any rate, the real Hindi clips,
and word error rate. Not part of the services."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

# Six real Hindi call-style clips (Apache-2.0, see its README): kept in the repository.
HINDI_CLIPS = sorted((Path(__file__).resolve().parent.parent / "audio" / "oriserve-examples").glob("*.wav"))
ESPEAK_RATE = 22050

SENTENCES = (
    "The weather is very hot today, so please drink plenty of water.",
    "Please call me back tomorrow morning after breakfast.",
    "My internet connection has been very slow since last week.",
    "I would like to change the address on my account.",
    "Can you tell me the balance of my savings account?",
    # A long one, for partial results while it is spoken.
    "I have been waiting for my refund for more than three weeks now, and nobody from your team "
    "has called me back even once, so please escalate this complaint to your manager today.",
)
# The five short sentences: the default test stream.
SHORT = (0, 1, 2, 3, 4)


def espeak(text: str, path: Path, voice: str = "en-us") -> np.ndarray:
    """Speak ``text`` with espeak-ng; return int16 samples at 22050 Hz, edges trimmed."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    samples, rate = sf.read(path, dtype="int16")
    assert rate == ESPEAK_RATE
    loud = np.flatnonzero(np.abs(samples) > 300)
    trimmed: np.ndarray = samples[loud[0] : loud[-1] + 1]
    return trimmed


def to_rate(samples: np.ndarray, rate: int, workdir: Path, name: str) -> Path:
    """Write 22050 Hz int16 samples as a 16-bit mono WAV at ``rate`` (sox resamples)."""
    src = workdir / f"{name}-src.wav"
    sf.write(src, samples, ESPEAK_RATE, subtype="PCM_16")
    out = workdir / f"{name}-{rate}.wav"
    # -D: no dither, so the same text gives the same samples in every run (sox dithers randomly).
    subprocess.run(["sox", "-D", str(src), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True)
    return out


@dataclass(frozen=True)
class Stream:
    path: Path
    rate: int
    pcm: bytes
    texts: tuple[str, ...]
    utterances: tuple[tuple[float, float], ...]  # (start, end) seconds of each sentence

    def clips(self, pad_s: float = 0.3) -> list[np.ndarray]:
        """Each sentence cut out as float32 samples, with ``pad_s`` of its silence on both sides."""
        audio = (np.frombuffer(self.pcm, np.int16) / 32768).astype(np.float32)
        rate = self.rate
        return [audio[max(0, int((a - pad_s) * rate)) : int((b + pad_s) * rate)] for a, b in self.utterances]


class Speech:
    """espeak-ng sentences separated by silence, at any rate; built once per test run."""

    GAP_S = 1.2

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._clips = [espeak(text, workdir / f"s{i}.wav") for i, text in enumerate(SENTENCES)]
        self._cache: dict[tuple[int, tuple[int, ...]], Stream] = {}

    def stream(self, rate: int, which: tuple[int, ...] = SHORT) -> Stream:
        key = (rate, which)
        if key not in self._cache:
            gap = np.zeros(int(self.GAP_S * ESPEAK_RATE), np.int16)
            parts, utterances, t = [gap], [], self.GAP_S
            for i in which:
                clip = self._clips[i]
                utterances.append((t, t + len(clip) / ESPEAK_RATE))
                t += len(clip) / ESPEAK_RATE + self.GAP_S
                parts += [clip, gap]
            name = "stream-" + "-".join(map(str, which))
            path = to_rate(np.concatenate(parts), rate, self.workdir, name)
            pcm = sf.read(path, dtype="int16")[0].tobytes()
            self._cache[key] = Stream(path, rate, pcm, tuple(SENTENCES[i] for i in which), tuple(utterances))
        return self._cache[key]


# --- word error rate ------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def spoken_apart(text: str, workdir: Path) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Each word spoken on its own and joined with pauses of 80-240 ms: 16 kHz audio and every
    word's true start and end."""
    parts, truth, t = [np.zeros(int(0.3 * ESPEAK_RATE), np.int16)], [], 0.3
    for n, word in enumerate(text.lower().replace(",", "").replace(".", "").replace("?", "").split()):
        samples = espeak(word, workdir / f"word-{n}.wav")
        truth.append((word, t, t + len(samples) / ESPEAK_RATE))
        pause = 0.08 * (1 + n % 3)
        parts += [samples, np.zeros(int(pause * ESPEAK_RATE), np.int16)]
        t += len(samples) / ESPEAK_RATE + int(pause * ESPEAK_RATE) / ESPEAK_RATE
    audio = np.concatenate(parts).astype(np.float32) / 32768
    return resample_poly(audio, 320, 441).astype(np.float32), truth  # 22050 -> 16000 Hz
