"""Word timings: what they cost and how close they land, on whisper-base in both backends.

    .venv/bin/python -m bench.words [--out bench/results/words.json]

Cost: the model time of each of the six espeak sentences (one segment each, one CPU thread),
without and with word timings, twice each, alternating. Accuracy: five sentences whose words are
spoken one by one and joined with known pauses (80-240 ms), so every word's true start and end is
known; the share of boundaries within 0.15 s and the median error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import write_report
from bench.measure import spread
from services.stack import CT2_DIR, MODEL_DIR, ROOT
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.interface import DEFAULT_CONTEXT_S, Decoding, SpeechModel
from services.transcriber.model import WhisperModel
from tools.speech import SENTENCES, Speech, spoken_apart

TOLERANCE_S = 0.15


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "words.json")
    args = parser.parse_args()
    decoding = Decoding(context_s=DEFAULT_CONTEXT_S)
    report: dict[str, Any] = {"command": ".venv/bin/python -m bench.words"}
    with tempfile.TemporaryDirectory() as folder:
        ct2 = CTranslate2Model.load(str(CT2_DIR), "cpu", "int8", decoding, threads=1)
        report["ctranslate2_int8"] = measure(ct2, Path(folder) / "ct2")
        torch.set_num_threads(1)
        transformers = WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, decoding)
        report["transformers_fp32"] = measure(transformers, Path(folder) / "transformers")
    print(json.dumps(report, indent=2))
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
