"""Word timings: what they cost and how close they land, on whisper-base in both backends.

    .venv/bin/python -m bench.words [--out bench/results/words.json] [--alignment-only]

Cost: the model time of each of the six espeak sentences (one segment each, one CPU thread),
without and with word timings, twice each, alternating. Accuracy: five sentences whose words are
spoken one by one and joined with known pauses (80-240 ms), so every word's true start and end is
known; the share of boundaries within 0.15 s and the median error.

Alignment (the transformers backend's numpy work after its decoder pass; ``--alignment-only``
runs just this and rewrites only that part of the report): ``dtw_starts`` and ``token_steps`` on a
28 s segment's sizes (150 tokens x 1400 encoder steps; whisper-base's 8 alignment heads), random
values, against the plain double loop and scipy median filter they replaced, their paths checked
equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.ndimage import median_filter

from bench.common import save_report
from bench.measure import spread
from services.stack import CT2_DIR, MODEL_DIR, ROOT
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.interface import DEFAULT_CONTEXT_S, Decoding, SpeechModel
from services.transcriber.model import WhisperModel
from services.transcriber.words import dtw_starts, token_steps
from tools.speech import SENTENCES, Speech, spoken_apart

TOLERANCE_S = 0.15
TOKENS, STEPS = 150, 1400  # a 28 s segment: about 5 tokens a second, 50 encoder steps a second
HEADS = 8  # whisper-base's alignment heads (models/whisper-base/generation_config.json)


def measure(model: SpeechModel, folder: Path) -> dict[str, Any]:
    folder.mkdir()
    clips = Speech(folder).stream(16000, (0, 1, 2, 3, 4, 5)).clips()
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(2):
        for label, words in (("without", False), ("with", True)):
            for clip in clips:
                started = time.perf_counter()
                model.transcribe([clip], [words])
                times[label].append(time.perf_counter() - started)
    errors = []
    for n, sentence in enumerate(SENTENCES[:5]):
        workdir = folder / f"apart-{n}"
        workdir.mkdir()
        clip, truth = spoken_apart(sentence, workdir)
        (transcript,) = model.transcribe([clip], [True])
        for (_, start, end), word in zip(truth, transcript.words, strict=False):
            errors += [abs(word.start - start), abs(word.end - end)]
    added = statistics.mean(times["with"]) / statistics.mean(times["without"]) - 1
    return {
        "model_time_per_segment_s": {label: spread(values, (50, 95), 3) for label, values in times.items()},
        "added_model_time": round(added, 3),
        "boundaries": len(errors),
        "within_0_15_s": round(sum(e <= TOLERANCE_S for e in errors) / len(errors), 3),
        "median_error_s": round(statistics.median(errors), 4),
    }


def loop_dtw(cost: NDArray[np.float64]) -> list[int]:
    """``dtw_starts`` as it was before it was vectorised: a Python loop over every cell."""
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    came = np.zeros((rows + 1, cols + 1), dtype=np.int8)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            options = (total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
            step = int(np.argmin(options))
            total[i, j] = cost[i - 1, j - 1] + options[step]
            came[i, j] = step
    starts = [cols] * rows
    i, j = rows, cols
    while i > 0 and j > 0:
        starts[i - 1] = j - 1
        step = int(came[i, j])
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return starts


def loop_token_steps(weights: NDArray[np.float32], frames: int) -> list[int]:
    """``token_steps`` as it was: scipy's median filter, then the loop."""
    matrix = weights[:, :, :frames].astype(np.float64)
    matrix = (matrix - matrix.mean(axis=1, keepdims=True)) / (matrix.std(axis=1, keepdims=True) + 1e-9)
    return loop_dtw(-median_filter(matrix, size=(1, 1, 7), mode="nearest").mean(axis=0))


def timed(run: Callable[..., Any], args: tuple[Any, ...], repeats: int) -> tuple[dict[str, float], Any]:
    """The fastest and median of ``repeats`` calls ``run(*args)`` (on shared cores the fastest is
    the least disturbed), and its result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run(*args)
        times.append(time.perf_counter() - started)
    return {"min": round(min(times), 4), "median": round(statistics.median(times), 4)}, result


def alignment(repeats: int = 5) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    cost = rng.standard_normal((TOKENS, STEPS))
    weights = rng.random((HEADS, TOKENS + 1, STEPS)).astype(np.float32)
    out: dict[str, Any] = {"tokens": TOKENS, "steps": STEPS, "heads": HEADS, "repeats": repeats}
    for name, new, old, args in (
        ("dtw_starts_s", dtw_starts, loop_dtw, (cost,)),
        ("token_steps_s", token_steps, loop_token_steps, (weights, STEPS)),
    ):
        after, path = timed(new, args, repeats)
        before, old_path = timed(old, args, max(1, repeats // 2))
        assert path == old_path, name
        out[name] = {"before": before, "after": after}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "words.json")
    parser.add_argument("--alignment-only", action="store_true", help="time the alignment only")
    args = parser.parse_args()
    if args.alignment_only:
        kept = json.loads(args.out.read_text()) if args.out.is_file() else {}
        kept["alignment"] = {"command": ".venv/bin/python -m bench.words --alignment-only", **alignment()}
        print(json.dumps(kept["alignment"], indent=2))
        save_report(args.out, kept)
        return 0
    decoding = Decoding(context_s=DEFAULT_CONTEXT_S)
    report: dict[str, Any] = {"command": ".venv/bin/python -m bench.words"}
    with tempfile.TemporaryDirectory() as folder:
        ct2 = CTranslate2Model.load(str(CT2_DIR), "cpu", "int8", decoding, threads=1)
        report["ctranslate2_int8"] = measure(ct2, Path(folder) / "ct2")
        torch.set_num_threads(1)
        transformers = WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, decoding)
        report["transformers_fp32"] = measure(transformers, Path(folder) / "transformers")
    report["alignment"] = alignment()
    print(json.dumps(report, indent=2))
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
