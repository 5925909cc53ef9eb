"""Test and bench material for voice detection at every level (not in the image): real speech
scaled to a given peak or clipped, and noises that are not speech (white, pink, mains hum,
dither), each normalised to a peak of full scale."""

from __future__ import annotations

import numpy as np
import soundfile as sf
from numpy.typing import NDArray

from services.stack import ROOT

RATE = 16000
# The six real Hindi call clips (16 kHz; audio/oriserve-examples/README.md says where from).
REAL = sorted((ROOT / "audio" / "oriserve-examples").glob("*.wav"))


def at_peak(samples: NDArray[np.floating], level: float | None) -> NDArray[np.floating]:
    """``samples`` scaled to peak at ``level`` dBFS; None: clipped, driven 6 dB over full scale."""
    peak = float(np.abs(samples).max())
    gain = 10 ** ((6 if level is None else level) / 20) / peak
    scaled: NDArray[np.floating] = np.clip(samples * gain, -1, 1)
    return scaled


def pcm16(samples: NDArray[np.floating]) -> bytes:
    return bytes(np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def real_clip(index: int) -> NDArray[np.float64]:
    """Real clip ``index`` at its own level, with half a second of silence on both sides."""
    samples, rate = sf.read(REAL[index])
    assert rate == RATE
    pad = np.zeros(RATE // 2)
    return np.concatenate([pad, samples, pad])


def noises(seconds: float = 6.0) -> dict[str, NDArray[np.floating]]:
    """Noises that are not speech, each peaking at full scale."""
    rng = np.random.default_rng(7)
    n = int(RATE * seconds)
    t = np.arange(n) / RATE
    brown = np.cumsum(rng.standard_normal(n))
    shapes = {
        "white": rng.standard_normal(n),
        "pink": brown - np.convolve(brown, np.ones(400) / 400, "same"),  # high-passed brown
        "hum50": sum(np.sin(2 * np.pi * 50 * k * t) / k for k in (1, 2, 3, 4, 5)),
        "hum60": sum(np.sin(2 * np.pi * 60 * k * t) / k for k in (1, 3, 5)),
        "dither": rng.integers(-1, 2, n).astype(np.float64),
    }
    return {name: np.asarray(s / np.abs(s).max()) for name, s in shapes.items()}
