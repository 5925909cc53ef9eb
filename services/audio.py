"""PCM helpers: conversion and resampling to the model's 16 kHz."""

from __future__ import annotations

from math import gcd

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from services.protocol import MODEL_RATE


def pcm16_to_float(pcm: bytes) -> NDArray[np.float32]:
    """16-bit little-endian PCM to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: NDArray[np.floating]) -> bytes:
    """float samples in [-1, 1] to 16-bit little-endian PCM, clipped."""
    scaled = np.clip(np.round(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2").tobytes()


def resample_pcm16(pcm: bytes, rate: int, target: int = MODEL_RATE) -> bytes:
    """Resample 16-bit PCM from ``rate`` to ``target`` Hz.

    ``resample_poly`` applies a Kaiser-windowed FIR low-pass at the lower of the
    two Nyquist frequencies, so downsampling from 32/48 kHz does not alias and
    upsampling from 8 kHz leaves no images.
    """
    if rate == target or not pcm:
        return pcm
    g = gcd(rate, target)
    out = resample_poly(pcm16_to_float(pcm), target // g, rate // g)
    return float_to_pcm16(out)


def _mulaw_table() -> NDArray[np.int16]:
    """ITU-T G.711 mu-law: each of the 256 codes as a 16-bit sample."""
    code = ~np.arange(256, dtype=np.uint8)
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    magnitude = (((mantissa.astype(np.int32) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> NDArray[np.int16]:
    """ITU-T G.711 A-law: each of the 256 codes as a 16-bit sample."""
    code = np.arange(256, dtype=np.uint8) ^ 0x55
    exponent, mantissa = (code >> 4) & 0x07, (code & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


G711 = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def decode_pcm16(data: bytes, encoding: str) -> bytes:
    """Audio in ``encoding`` (``linear16``, or G.711 ``mulaw``/``alaw``: a byte a sample) as
    16-bit little-endian PCM."""
    if encoding == "linear16":
        return data
    return G711[encoding][np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def split_channels(pcm: bytes, channels: int) -> list[bytes]:
    """Interleaved 16-bit PCM (whole sample frames) as one PCM per channel."""
    if channels == 1:
        return [pcm]
    samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, channels)
    return [samples[:, c].tobytes() for c in range(channels)]


class StreamResampler:
    """``resample_pcm16`` for audio that comes in pieces: the output of all pieces is ``lead``
    samples of silence, then what one call on the whole would give, but for the last
    ``context`` input samples, held until more comes (the filter needs what follows them) and
    given by ``flush``.

    The lead makes up for what is held: without it, the 30 ms VAD frame that ends exactly where a
    client's piece ends (every other one, for 20 ms pieces) could be heard only with the next
    piece, and every decision on it (a pause begun, a segment closed) came one piece late. With
    it, each piece's audio is out whole by the piece's end, shifted later by ``lead`` samples
    (under 2 ms at every rate here)."""

    def __init__(self, rate: int, target: int = MODEL_RATE) -> None:
        g = gcd(rate, target)
        self.up, self.down = target // g, rate // g
        # resample_poly's filter reaches 10 * max(up, down) samples each way at the upsampled
        # rate: this many input samples; held as whole output samples (a multiple of ``down``).
        reach = -(-10 * max(self.up, self.down) // self.up)
        self.context = reach + (-reach) % self.down
        self.lead = self.context * self.up // self.down  # output samples
        self._history = np.zeros(0, np.float32)  # already given out: left context
        self._pending = np.zeros(0, np.float32)  # not given out yet: waits for right context
        self._started = False

    def feed(self, pcm: bytes) -> bytes:
        lead = b"" if self._started else bytes(2 * self.lead)
        self._started = True
        x = np.concatenate([self._history, self._pending, pcm16_to_float(pcm)])
        done = len(x) - self.context  # input samples whose output is final now
        done -= (done - len(self._history)) % self.down
        if done <= len(self._history):
            self._pending = x[len(self._history) :]
            return lead
        y = resample_poly(x, self.up, self.down)
        out = y[len(self._history) * self.up // self.down : done * self.up // self.down]
        self._history, self._pending = x[max(0, done - self.context) : done], x[done:]
        return lead + float_to_pcm16(out)

    def flush(self) -> bytes:
        """The output of what is still held (the stream ended)."""
        x = np.concatenate([self._history, self._pending])
        start = len(self._history) * self.up // self.down
        self._history, self._pending = np.zeros(0, np.float32), np.zeros(0, np.float32)
        return float_to_pcm16(resample_poly(x, self.up, self.down)[start:]) if len(x) else b""


FLATNESS_BLOCK = 512  # samples per spectrum (about 32 ms at 16 kHz)
FLATNESS_MAX_BLOCKS = 64  # spread over the audio: the cost stays bounded on long segments
_HANN = np.hanning(FLATNESS_BLOCK).astype(np.float32)


def spectral_flatness(pcm: bytes, rate: int) -> float:
    """Wiener entropy of the mean power spectrum between 100 Hz and 90 % of Nyquist.

    Near 1 for white noise, about 0.6 for pink noise, under 0.15 for clean speech
    (0.47 for speech in white noise at 5 dB SNR). Averages the Hann-windowed spectra of at
    most FLATNESS_MAX_BLOCKS blocks spread over the audio: one vectorised FFT, well under a
    millisecond, as it runs on the ingest's event loop.
    """
    samples = pcm16_to_float(pcm)
    count = len(samples) // FLATNESS_BLOCK
    if count == 0:
        return 0.0
    blocks = samples[: count * FLATNESS_BLOCK].reshape(count, FLATNESS_BLOCK)
    blocks = blocks[:: -(-count // FLATNESS_MAX_BLOCKS)]
    blocks = (blocks - blocks.mean(axis=1, keepdims=True)) * _HANN
    power = np.mean(np.abs(np.fft.rfft(blocks, axis=1)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(FLATNESS_BLOCK, 1 / rate)
    band = power[(freqs > 100) & (freqs < rate / 2 * 0.9)] + 1e-12
    return float(np.exp(np.mean(np.log(band))) / np.mean(band))
