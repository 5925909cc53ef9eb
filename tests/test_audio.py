"""Resampling to 16 kHz: right frequency, no aliasing; in pieces, the whole, and nothing held late."""

from __future__ import annotations

import numpy as np
import pytest

from services.audio import StreamResampler, float_to_pcm16, pcm16_to_float, resample_pcm16


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


@pytest.mark.parametrize(("rate", "most_lead_ms"), [(24000, 1), (48000, 2), (22050, 20), (44100, 10)])
def test_a_stream_resampled_in_pieces_is_the_whole_after_a_short_lead(rate: int, most_lead_ms: int) -> None:
    """Exact but for the lead, whatever the pieces; the lead is short at the rates that stream
    here (OpenAI Realtime's and Exotel's 24 kHz), longer at rates whose ratio to 16 kHz is
    coarse (44.1 kHz holds whole 10 ms steps)."""
    rng = np.random.default_rng(rate)
    pcm = float_to_pcm16(0.3 * rng.standard_normal(rate * 2))
    resampler, out, at = StreamResampler(rate), b"", 0
    while at < len(pcm):
        step = 2 * int(rng.integers(1, rate // 20))
        out += resampler.feed(pcm[at : at + step])
        at += step
    out += resampler.flush()
    whole = np.frombuffer(resample_pcm16(pcm, rate), np.int16)
    got = np.frombuffer(out, np.int16)
    assert resampler.lead <= most_lead_ms * 16 and not got[: resampler.lead].any()
    assert len(got) == resampler.lead + len(whole)
    assert np.abs(got[resampler.lead :].astype(int) - whole).max() <= 1


@pytest.mark.parametrize(
    ("rate", "piece_ms"), [(24000, 20), (24000, 10), (24000, 40), (48000, 20), (44100, 20)]
)
def test_every_piece_is_out_whole_by_its_end(rate: int, piece_ms: int) -> None:
    """What a client sent so far is all at 16 kHz once its piece is in: the VAD frame that ends
    where a piece ends is decided on that piece (OpenAI Realtime's 24 kHz in 20 ms pieces: before
    the lead, every other frame waited for the next piece, and its pauses were told 20 ms late)."""
    piece = rate * piece_ms // 1000 * 2
    pcm = tone(440, rate, 1.0)
    resampler, out = StreamResampler(rate), 0
    for n, at in enumerate(range(0, len(pcm) - piece + 1, piece), start=1):
        out += len(resampler.feed(pcm[at : at + piece])) // 2
        assert out >= n * piece // 2 * 16000 // rate - 1
