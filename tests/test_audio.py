"""Resampling to 16 kHz: right frequency, no aliasing."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio import float_to_pcm16, pcm16_to_float, resample_pcm16


def tone(freq: float, rate: int, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return float_to_pcm16(0.5 * np.sin(2 * np.pi * freq * t))


def peak_hz(pcm: bytes, rate: int) -> float:
    x = pcm16_to_float(pcm) * np.hanning(len(pcm) // 2)
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("rate", "freq"), [(8000, 440.0), (8000, 3000.0), (32000, 1000.0), (48000, 5000.0)])
def test_tone_keeps_its_frequency_and_duration(rate: int, freq: float) -> None:
    out = resample_pcm16(tone(freq, rate), rate)
    assert len(out) // 2 == 16000
    assert peak_hz(out, 16000) == pytest.approx(freq, abs=2)
    level = np.sqrt(np.mean(pcm16_to_float(out)[1000:-1000] ** 2))
    assert level == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize("rate", [32000, 48000])
def test_content_above_8khz_is_filtered_not_aliased(rate: int) -> None:
    """12 kHz would fold to 4 kHz without the anti-aliasing low-pass."""
    out = pcm16_to_float(resample_pcm16(tone(12000, rate), rate))
    assert np.sqrt(np.mean(out**2)) < 0.005  # > 40 dB down from the 0.35 RMS input


def test_16k_passes_through_untouched() -> None:
    pcm = tone(1000, 16000)
    assert resample_pcm16(pcm, 16000) is pcm
