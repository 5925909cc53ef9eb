"""Voice detection at every level: what each piece costs and what it lets through.

    .venv/bin/python -m bench.vad [--out bench/results/vad.json]

Three detectors, all through the real segmenter at 16 kHz: ``webrtc`` (the old one: WebRTC VAD
mode 3 on the raw level), ``levelled`` (WebRTC VAD on frames lifted by the level follower),
``levelled+silero`` (``make run``'s default: Silero must also hear speech in each segment).
- Cost: CPU time per 30 ms frame of the segmenter fed real speech at its own level (WebRTC,
  with and without the lift) and of Silero per 32 ms window, best of five, one thread.
- Heard: the six real call clips (audio/oriserve-examples) at their own level, at -30, -40 and
  -50 dBFS peaks and clipped 6 dB over full scale: how many give a segment.
- Let through: white and pink noise, 50/60 Hz mains hum with harmonics and dither at -70 to 0
  dBFS, 6 s each: how many give a segment (each would reach the model and could come back as
  "you").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_report
from services.segmenter import Segment, Segmenter, SegmenterConfig
from services.stack import ROOT
from services.voice import SpeechConfirmer
from tools.levels import RATE, REAL, at_peak, noises, pcm16, real_clip

DETECTORS = {
    "webrtc": SegmenterConfig(level_gain=False, confirm_speech=False),
    "levelled": SegmenterConfig(confirm_speech=False),
    "levelled+silero": SegmenterConfig(),
}
LEVELS: tuple[float | None, ...] = (-30.0, -40.0, -50.0, None)
NOISE_LEVELS = (-70, -60, -50, -40, -30, -20, -10, 0)


def segments(pcm: bytes, config: SegmenterConfig) -> int:
    segmenter = Segmenter(RATE, config)
    return sum(isinstance(e, Segment) for e in segmenter.feed(pcm) + segmenter.flush())


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        work()
        times.append(time.process_time() - started)
    return min(times)


def costs() -> dict[str, float]:
    speech = pcm16(np.concatenate([real_clip(i) for i in range(len(REAL))]))
    frames = len(speech) // (RATE * 30 // 1000 * 2)
    confirm = SpeechConfirmer(RATE)
    windows = len(speech) // (512 * 2)

    def feed(config: SegmenterConfig) -> Callable[[], object]:
        return lambda: Segmenter(RATE, config).feed(speech)

    return {
        "webrtc_ms_per_frame": 1000 * best_of(5, feed(DETECTORS["webrtc"])) / frames,
        "levelled_ms_per_frame": 1000 * best_of(5, feed(DETECTORS["levelled"])) / frames,
        "silero_ms_per_window": 1000 * best_of(5, lambda: confirm(speech)) / windows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vad.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"command": ".venv/bin/python -m bench.vad", "cost": costs()}
    heard: dict[str, dict[str, int]] = {}
    for name, config in DETECTORS.items():
        row = {"own": sum(segments(pcm16(real_clip(i)), config) > 0 for i in range(len(REAL)))}
        for level in LEVELS:
            label = "clipped" if level is None else f"{level:g}"
            row[label] = sum(
                segments(pcm16(at_peak(real_clip(i), level)), config) > 0 for i in range(len(REAL))
            )
        heard[name] = row
    through: dict[str, dict[str, int]] = {}
    for name, config in DETECTORS.items():
        through[name] = {
            f"{noise}@{level}": segments(pcm16(samples * 10 ** (level / 20)), config)
            for noise, samples in noises().items()
            for level in NOISE_LEVELS
        }
    report["heard_of_6_real_clips"] = heard
    report["segments_from_noise"] = {name: sum(row.values()) for name, row in through.items()}
    report["segments_from_noise_by_case"] = {n: {k: v for k, v in r.items() if v} for n, r in through.items()}
    write_report(args.out, report)
    cost = report["cost"]
    print(
        f"cost: WebRTC {cost['webrtc_ms_per_frame']:.3f} ms/frame, levelled "
        f"{cost['levelled_ms_per_frame']:.3f} ms/frame, Silero {cost['silero_ms_per_window']:.3f} ms/window"
    )
    print(f"{'detector':<18}" + "".join(f"{k:>9}" for k in heard["webrtc"]) + f"{'noise segs':>12}")
    for name, row in heard.items():
        print(
            f"{name:<18}"
            + "".join(f"{v:>9}" for v in row.values())
            + f"{report['segments_from_noise'][name]:>12}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
