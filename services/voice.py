"""Voice detection that hears every level: sans-I/O.

WebRTC VAD decides partly on energy: speech peaking below about -40 dBFS (a soft voice, a
low-gain headset, a quiet phone line) was never marked as speech, and such a session got no
text at all. Two pieces make detection level-independent, and a third gives the model the
quiet speech at a normal level (``for_model``):

- ``LevelledVad``: a gain in front of WebRTC VAD that follows the stream's level (a peak
  tracker that rises at once and falls 3 dB/s) and lifts each frame towards a normal speech
  peak (-20 dBFS), by at most ``MAX_GAIN_DB``. Digital silence stays silence.
- ``SpeechConfirmer``: Silero's VAD (its ONNX model, shipped in ``services/data``, run by
  onnxruntime on one thread) over each candidate segment, lifted to the same peak. Noise that the
  lifted WebRTC VAD takes for speech (mains hum, pink noise) has no speech for Silero; such a
  segment is dropped as ``no_speech`` and never reaches the model. It reads only candidate
  segments, as they grow (``SpeechScan``), and only until it has heard enough: 0.08-0.17 ms per
  32 ms window (bench/vad.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime
from numpy.typing import NDArray

SILERO_MODEL = Path(__file__).with_name("data") / "silero_vad.onnx"
TARGET_PEAK_DB = -20.0  # what a normal talker peaks at; quieter frames are lifted towards it
MAX_GAIN_DB = 45.0  # -50 dBFS speech is heard; a floor of noise far below it is not lifted more
RELEASE_DB_PER_S = 3.0  # how fast the tracked level falls after the stream gets quieter
SILENCE_DB = -90.0  # frames peaking below this (digital silence, dither) leave the level alone
CLIPPED = 32767  # a sample at full scale (either sign) counts as clipped
SPEECH_PROB = 0.5  # a Silero window is speech above this probability
MODEL_LIFT_BELOW_DB = -30.0  # segments peaking below this reach the model lifted (for_model)


def peak_db(samples: NDArray[np.int16]) -> float:
    """The peak of 16-bit samples in dBFS (-inf for silence)."""
    peak = int(np.abs(samples.astype(np.int32)).max()) if len(samples) else 0
    return 20 * math.log10(peak / 32768) if peak else -math.inf


def clipped_share(samples: NDArray[np.int16]) -> float:
    """The share of samples at full scale: clipped on the way in."""
    if not len(samples):
        return 0.0
    return float(np.count_nonzero(np.abs(samples.astype(np.int32)) >= CLIPPED)) / len(samples)


def lift(samples: NDArray[np.int16], gain_db: float) -> NDArray[np.int16]:
    """``samples`` raised by ``gain_db`` (clipped at full scale)."""
    if gain_db < 0.5:
        return samples
    scaled = samples.astype(np.float32) * np.float32(10 ** (gain_db / 20))
    lifted: NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return lifted


def for_model(pcm: bytes) -> bytes:
    """Audio as the model should hear it: speech peaking below ``MODEL_LIFT_BELOW_DB`` lifted to a
    normal peak. Whisper's log-mel features are clamped relative to their maximum but offset by
    an absolute constant, so the same words 30 dB quieter are other features (whisper-base heard
    "I will take out the data now." at -3 dBFS and "We've become too thin enough." at -50)."""
    samples = np.frombuffer(pcm, "<i2")
    level = peak_db(samples)
    if level >= MODEL_LIFT_BELOW_DB or level == -math.inf:
        return pcm
    return lift(samples, gain_for(level)).tobytes()


def gain_for(level_db: float) -> float:
    """The gain that lifts a level towards a normal speech peak, bounded."""
    return min(max(TARGET_PEAK_DB - level_db, 0.0), MAX_GAIN_DB)


class LevelledVad:
    """A frame VAD (``bytes -> bool``) whose input is lifted to a normal level first."""

    def __init__(self, vad: Callable[[bytes], bool], frame_ms: int) -> None:
        self._vad = vad
        self._release = RELEASE_DB_PER_S * frame_ms / 1000
        self.level_db = -math.inf  # the tracked peak level of the stream

    def __call__(self, frame: bytes) -> bool:
        samples = np.frombuffer(frame, "<i2")
        level = peak_db(samples)
        if level > SILENCE_DB:
            self.level_db = max(level, self.level_db - self._release)
        if self.level_db == -math.inf:
            return self._vad(frame)
        return self._vad(lift(samples, gain_for(self.level_db)).tobytes())


@cache
def _silero() -> onnxruntime.InferenceSession:
    """One Silero session per process, shared by every stream (the model's state is passed in)."""
    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(SILERO_MODEL), sess_options=options, providers=["CPUExecutionProvider"]
    )


class SpeechConfirmer:
    """Seconds of speech Silero hears in a stretch of 16-bit PCM at ``rate`` (8 or 16 kHz
    natively; 32/48 kHz are decimated to 16 kHz first, as Silero's own wrapper does), reading no
    further once it has heard ``enough``: real speech is confirmed within its first windows, so
    only what is not speech is read to its end. ``scan`` reads a stretch as it grows."""

    def __init__(self, rate: int) -> None:
        self.session = _silero()
        self.step = 1 if rate in (8000, 16000) else rate // 16000
        self.rate = np.array(rate // self.step, np.int64)
        self.window = 512 if rate // self.step == 16000 else 256

    def __call__(self, pcm: bytes, enough: float = math.inf) -> float:
        samples = np.frombuffer(pcm, "<i2")
        scan = self.scan(enough, gain_for(peak_db(samples[:: self.step])))
        scan.feed(pcm)
        return scan.heard

    def scan(self, enough: float, gain_db: float | None = None) -> SpeechScan:
        """A scan that is fed the stretch piece by piece; ``gain_db`` None: each window is lifted
        by the gain of the loudest sample fed so far."""
        return SpeechScan(self, enough, gain_db)


class SpeechScan:
    """Silero over a stretch of PCM fed in pieces, window by window, with its state carried
    across; no window is read once ``enough`` seconds of speech were heard."""

    def __init__(self, confirmer: SpeechConfirmer, enough: float, gain_db: float | None) -> None:
        self._c = confirmer
        self._enough = enough
        self._gain_db = gain_db
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros((1, confirmer.window // 8), np.float32)
        self._pending = np.zeros(0, np.int16)  # decimated samples short of a window
        self._peak = -math.inf
        self._read = 0  # decimated samples read in whole windows
        self.heard = 0.0  # seconds of speech heard (at most ``enough`` and one window)
        self.confirmed_at: int | None = None  # bytes into the stretch where ``enough`` was heard

    def feed(self, pcm: bytes) -> None:
        if self.confirmed_at is not None:
            return
        c = self._c
        samples = np.frombuffer(pcm, "<i2")[:: c.step]
        self._pending = np.concatenate([self._pending, samples])
        self._peak = max(self._peak, peak_db(samples))
        gain = gain_for(self._peak) if self._gain_db is None else self._gain_db
        window_s = c.window / int(c.rate)
        windows = len(self._pending) // c.window
        for start in range(0, windows * c.window, c.window):
            lifted = lift(self._pending[start : start + c.window], gain).astype(np.float32) / 32768
            window = np.concatenate([self._context, lifted[None, :]], axis=1)
            prob, self._state = c.session.run(None, {"input": window, "state": self._state, "sr": c.rate})
            self._context = window[:, -self._context.shape[1] :]
            if float(prob[0, 0]) > SPEECH_PROB:
                self.heard += window_s
                if self.heard >= self._enough:
                    self.confirmed_at = (self._read + start + c.window) * c.step * 2
                    return
        self._read += windows * c.window
        self._pending = self._pending[windows * c.window :]
