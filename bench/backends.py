"""Speed and WER of the transcriber's model backends on the same audio, by batch size and threads.

The same clips go through every backend: the five espeak-ng sentences of the tests (each cut out
with 0.3 s of padding; WER against the text, normalised like ``tools.speech.wer``) and the six real
Hindi clips in audio/oriserve-examples (no references: their "vs ref" is the WER of a
backend's output against the transformers fp32 output at the same batch and threads, i.e. how far
it drifts from the reference, not how right it is). Each set is cycled
to ``--segments`` clips so every batch is full. Backends: transformers fp32 (``WhisperModel``, the
reference), transformers with torch dynamic int8 quantization of every ``nn.Linear``, and
CTranslate2 (``CTranslate2Model``) int8 and float32. Times are model time per segment (feature
extraction included) after one warm-up batch. The backends take turns, ``--repeat`` rounds of
them per batch size, and each one's fastest round counts, so load from other work on the machine
falls on all of them alike.

    .venv/bin/python -m bench.backends [--batches 1,4,8] [--threads 1,2] [--backends all]
                                       [--segments 8] [--repeat 3] [--out bench/results/backends.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ctranslate2  # type: ignore[import-untyped]
import numpy as np
import soundfile as sf
import torch
import transformers
from numpy.typing import NDArray

from bench.common import write_report
from services.stack import ROOT
from services.transcriber.ct2_model import CTranslate2Model
from services.transcriber.interface import Decoding, SpeechModel
from services.transcriber.model import WhisperModel
from tools.speech import HINDI_CLIPS, Speech, wer

MODEL_DIR = ROOT / "models" / "whisper-base"
CT2_DIR = ROOT / "models" / "whisper-base-ct2"
PAD_S = 0.3
RATE = 16000

Clip = NDArray[np.float32]


@dataclass(frozen=True)
class Backend:
    name: str  # backend label in the table
    compute: str
    load: Callable[[int, Decoding], SpeechModel]  # (threads, decoding) -> a loaded model


def load_transformers(threads: int, decoding: Decoding) -> SpeechModel:
    torch.set_num_threads(threads)
    return WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, decoding)


def load_transformers_int8(threads: int, decoding: Decoding) -> SpeechModel:
    model = WhisperModel.load(str(MODEL_DIR), "cpu", torch.float32, decoding)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():  # deprecated in favour of torchao, which is not installed here
        warnings.simplefilter("ignore")
        quantize = torch.ao.quantization.quantize_dynamic
        model.model = quantize(model.model, {torch.nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    return model


def load_ct2(compute: str) -> Callable[[int, Decoding], SpeechModel]:
    def load(threads: int, decoding: Decoding) -> SpeechModel:
        return CTranslate2Model.load(str(CT2_DIR), "cpu", compute, decoding, threads)

    return load


BACKENDS = {  # the reference first: the others' Hindi output is compared with its
    "transformers": Backend("transformers", "float32", load_transformers),
    "transformers-int8": Backend("transformers", "int8 (torch dynamic)", load_transformers_int8),
    "ct2-int8": Backend("ctranslate2", "int8", load_ct2("int8")),
    "ct2-float32": Backend("ctranslate2", "float32", load_ct2("float32")),
}


def espeak_clips(workdir: Path) -> tuple[list[Clip], list[str]]:
    stream = Speech(workdir).stream(RATE)
    return stream.clips(PAD_S), list(stream.texts)


def hindi_clips() -> list[Clip]:
    clips = []
    for path in HINDI_CLIPS:
        samples, rate = sf.read(path, dtype="float32")
        assert rate == RATE and samples.ndim == 1, f"{path}: expected 16 kHz mono"
        clips.append(samples)
    return clips


def cycle(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def timed(model: SpeechModel, clips: list[Clip], batch: int) -> tuple[float, list[str]]:
    """Seconds for all ``clips`` in batches of ``batch``, and the texts."""
    started, texts = time.perf_counter(), []
    for i in range(0, len(clips), batch):
        texts += [t.text for t in model.transcribe(clips[i : i + batch])]
    return time.perf_counter() - started, texts


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ctranslate2": ctranslate2.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--backends", default="all", help=f"comma-separated of {', '.join(BACKENDS)}")
    parser.add_argument("--segments", type=int, default=8, help="clips per set (cycled)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "backends.json")
    args = parser.parse_args()
    names = list(BACKENDS) if args.backends == "all" else args.backends.split(",")
    batches = [int(x) for x in args.batches.split(",")]
    threads_list = [int(x) for x in args.threads.split(",")]
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        english, references = espeak_clips(Path(tmp))
    hindi = hindi_clips()
    # name -> (clips cycled to --segments, references of the distinct clips, number of distinct clips)
    sets: dict[str, tuple[list[Clip], list[str] | None, int]] = {
        "espeak": (cycle(english, args.segments), references, len(english)),
        "hindi": (cycle(hindi, args.segments), None, len(hindi)),
    }
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.backends "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": machine(),
        "load_average_start": os.getloadavg(),
        "model": "whisper-base (multilingual, OpenAI weights via models/whisper-base[-ct2])",
        "decoding": "greedy, language=en, task=transcribe, max_new_tokens = 16 + 10/s",
        "audio_s": {
            name: round(sum(len(c) for c in clips) / RATE, 2) for name, (clips, _, _) in sets.items()
        },
        "rows": [],
        "skipped": {},
    }
    header = (
        f"{'backend':<13} {'compute':<21} {'batch':>5} {'thr':>3} | {'espeak s/seg':>12} {'RTF':>5} "
        f"{'WER':>5} | {'hindi s/seg':>11} {'RTF':>5} {'vs ref':>6}"
    )
    print(header, flush=True)
    print("-" * len(header), flush=True)
    for threads in threads_list:
        models: dict[str, SpeechModel] = {}
        for name in names:
            try:
                models[name] = BACKENDS[name].load(threads, Decoding())
                torch.set_num_threads(threads)
                models[name].transcribe(sets["espeak"][0][: max(batches)])  # warm-up, at the largest batch
            except Exception as exc:  # optional backends (torch dynamic quantization) may not work
                report["skipped"][name] = f"{type(exc).__name__}: {exc}"
                print(f"{name}: skipped ({type(exc).__name__}: {exc})", flush=True)
                models.pop(name, None)
        for batch in batches:
            # Interleaved: each repeat runs every backend once, so other work on the machine falls
            # on all of them alike; the fastest repeat counts.
            best: dict[tuple[str, str], tuple[float, list[str]]] = {}
            load = os.getloadavg()[0]
            for _ in range(args.repeat):
                for name, model in models.items():
                    torch.set_num_threads(threads)  # torch's pool is global; CTranslate2's is per model
                    for set_name, (clips, _, _) in sets.items():
                        seconds, texts = timed(model, clips, batch)
                        if seconds < best.get((name, set_name), (float("inf"), []))[0]:
                            best[name, set_name] = seconds, texts
            load = max(load, os.getloadavg()[0])
            reference: list[str] | None = None
            for name in sorted(models, key=lambda n: n != "transformers"):  # the reference first
                backend = BACKENDS[name]
                row: dict[str, Any] = {
                    "backend": backend.name,
                    "compute": backend.compute,
                    "batch": batch,
                    "threads": threads,
                    "load_average_1min": round(load, 2),  # others' work on this machine meanwhile
                }
                for set_name, (clips, refs, distinct) in sets.items():
                    seconds, texts = best[name, set_name]
                    audio = sum(len(c) for c in clips) / RATE
                    texts = texts[:distinct]
                    row[set_name] = {
                        "s_per_segment": round(seconds / len(clips), 3),
                        "rtf": round(seconds / audio, 3),
                        "texts": texts,
                    }
                    if refs is not None:  # each distinct clip once
                        row[set_name]["wer"] = round(wer(" ".join(refs[: len(texts)]), " ".join(texts)), 3)
                if name == "transformers":
                    reference = row["hindi"]["texts"]
                elif reference is not None:  # no references for Hindi: how far from the reference backend
                    row["hindi"]["wer_vs_reference"] = round(
                        wer(" ".join(reference), " ".join(row["hindi"]["texts"])), 3
                    )
                report["rows"].append(row)
                e, h = row["espeak"], row["hindi"]
                print(
                    f"{backend.name:<13} {backend.compute:<21} {batch:>5} {threads:>3} | "
                    f"{e['s_per_segment']:>12.3f} {e['rtf']:>5.2f} {e['wer']:>5.3f} | "
                    f"{h['s_per_segment']:>11.3f} {h['rtf']:>5.2f} {h.get('wer_vs_reference', '-'):>6}",
                    flush=True,
                )
            write_report(args.out, report)  # after every group: a run cut short keeps what it measured
        del models
    report["load_average_end"] = os.getloadavg()
    write_report(args.out, report)
    start, end = report["load_average_start"][0], report["load_average_end"][0]
    print(f"load average {start:.1f} at start, {end:.1f} at end")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
