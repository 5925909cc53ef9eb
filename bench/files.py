"""Files beside live audio: a long file's speed and accuracy against faster-whisper's batched
pipeline, and what a file being transcribed costs the live talkers on the same stack.

    .venv/bin/python -m bench.files [--minutes 10] [--talkers 8] [--batch 8] [--threads 2]
        [--env KEY=VALUE ...] [--out bench/results/files.json]

- **The file**: the evalset's English utterances that have references (``bench/evalset``: real
  recorded speech the project was never tuned on), in turn, 1 s of silence between, repeated until
  ``--minutes`` long; one 16 kHz WAV; its reference is their texts in that order.
- **faster-whisper**: 1.2.1's ``BatchedInferencePipeline`` (in its own virtual environment under
  .cache/, made on first use) on the same CTranslate2 whisper-base (``models/whisper-base-ct2``),
  int8, ``cpu_threads`` = ``--threads``, ``batch_size`` = ``--batch``, ``language="en"``, greedy
  (beam 1, as our transcribers decode), its default Silero VAD; timed from the model loaded to
  the text, in a child process that does nothing else.
- **Ours**: `make run`'s stack (``services.stack``: on 2 cores two finals transcribers of one
  thread each and a partials one; ``--env`` overrides) on a private redis-server; the file
  POSTed with the official ``openai`` SDK to ``/v1/audio/transcriptions`` (``whisper-1``,
  ``json``); timed from the request to the answer (upload, VAD, the pools, the answer). A short
  file goes first (not timed).
- **Live**: ``--talkers`` real-time talkers (``bench.talkers``' sessions: the six espeak-ng
  sentences, 20 ms frames, staggered) alone, then again while the long file is being transcribed
  (posted 5 s before they start): each utterance's end of speech -> final, p50 and p95.

WER on English tokens (``tools/romanize.py``, as ``bench.fidelity`` scores). CPU seconds: the
child's own (faster-whisper), the stack's processes' (ours). Results: ``--out``, with the command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import soundfile as sf

from bench.common import Session, side_venv, write_report
from bench.fidelity import load_evalset
from bench.measure import cpu_seconds, spread
from bench.talkers import SENTENCES, descendants, end_to_final, ours, talk
from services.stack import ROOT, free_port
from tools.romanize import score
from tools.speech import Speech

CT2_DIR = ROOT / "models" / "whisper-base-ct2"
RATE = 16000
PAUSE_S = 1.0
FW_VENV = ROOT / ".cache" / "faster-whisper-venv"
FW_PACKAGES = ("faster-whisper==1.2.1", "ctranslate2==4.8.5", "numpy==2.4.6", "soundfile==0.14.0")
FW_SCRIPT = """
import json, resource, sys, time
import soundfile
from faster_whisper import BatchedInferencePipeline, WhisperModel
model_dir, wav, threads, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
pipeline = BatchedInferencePipeline(model)
audio, _ = soundfile.read(wav, dtype="float32")
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, cpu_before = time.monotonic(), cpu()
segments, _ = pipeline.transcribe(audio, language="en", beam_size=1, batch_size=batch)
text = " ".join(s.text.strip() for s in segments)
print(json.dumps({"wall_s": time.monotonic() - started, "cpu_s": cpu() - cpu_before, "text": text}))
"""


def long_file(evalset: Path, minutes: float, path: Path) -> tuple[str, float, int]:
    """The file at ``path``; its reference, its length in seconds, and how many utterances."""
    utts = [u for u in load_evalset(evalset, languages=("en",)) if u.text]
    pause = np.zeros(int(PAUSE_S * RATE), np.int16)
    parts, texts, length = [], [], 0
    while length < minutes * 60 * RATE:
        for utt in utts:
            samples = np.frombuffer(utt.pcm(), "<i2")
            parts += [samples, pause]
            texts.append(str(utt.text))
            length += len(samples) + len(pause)
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")
    return " ".join(texts), length / RATE, len(texts)


def faster_whisper(wav: Path, threads: int, batch: int) -> dict[str, Any]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    python = side_venv(FW_VENV, FW_PACKAGES)
    cmd = [str(python), "-c", FW_SCRIPT, str(CT2_DIR), str(wav), str(threads), str(batch)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def post(base_url: str, wav: Path) -> dict[str, Any]:
    """The file through the openai SDK: its text, and the wall time of the request."""
    client = openai.OpenAI(base_url=base_url, api_key="bench", timeout=3600, max_retries=0)
    started = time.monotonic()
    with wav.open("rb") as audio:
        answer = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="json")
    return {"wall_s": time.monotonic() - started, "text": answer.text}


def stack_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def scored(result: dict[str, Any], reference: str, audio_s: float) -> dict[str, Any]:
    words = score(reference, result["text"], "en").words
    rounded = {k: round(v, 1) for k, v in result.items() if isinstance(v, float)}
    return rounded | {
        "x_real_time": round(audio_s / result["wall_s"], 1),
        "wer": round(words.rate, 4),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "text_head": result["text"][:300],
    }


def live(uri: str, speech: Speech, talkers: int) -> dict[str, Any]:
    stream = speech.stream(RATE, SENTENCES)
    audio_s = len(stream.pcm) / 2 / stream.rate
    sessions = [Session(uri, stream.pcm, stream.rate, 20) for _ in range(talkers)]
    asyncio.run(talk(sessions, audio_s / talkers, 180))
    latencies, answered, _ = end_to_final(sessions, stream)
    counts = {"utterances": talkers * len(stream.utterances), "answered": answered}
    return counts | spread(latencies, (50, 95), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--talkers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="faster-whisper's batch_size")
    parser.add_argument("--threads", type=int, default=2, help="faster-whisper's cpu_threads")
    parser.add_argument("--evalset", type=Path, default=ROOT / "bench" / "evalset")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our stack (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "files.json")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"command": " ".join(["python -m bench.files", *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        wav = workdir / "long.wav"
        reference, audio_s, count = long_file(args.evalset, args.minutes, wav)
        report["file"] = {"seconds": round(audio_s, 1), "utterances": count, "words": len(reference.split())}
        print(f"file: {audio_s / 60:.1f} min, {count} utterances", flush=True)
        fw = faster_whisper(wav, args.threads, args.batch)
        settings = {"batch": args.batch, "threads": args.threads}
        report["faster_whisper"] = scored(fw, reference, audio_s) | settings
        print(f"faster-whisper batched: {report['faster_whisper']}", flush=True)
        short = workdir / "short.wav"
        sf.write(short, sf.read(wav, dtype="int16", frames=10 * RATE)[0], RATE, subtype="PCM_16")
        speech = Speech(workdir)
        stack_args = argparse.Namespace(env=args.env, metrics_port=free_port())
        with ours(stack_args, workdir, "files") as (uri, root):
            base_url = "http" + uri.removeprefix("ws") + "/v1"
            post(base_url, short)  # not timed
            pids = [root, *descendants(root)]
            before = stack_cpu(pids)
            alone = post(base_url, wav)
            alone["cpu_s"] = stack_cpu(pids) - before
            report["ours"] = scored(alone, reference, audio_s) | {"env": args.env}
            print(f"ours: {report['ours']}", flush=True)
            report["live_alone"] = live(uri, speech, args.talkers)
            print(f"{args.talkers} talkers alone: {report['live_alone']}", flush=True)
            beside: dict[str, Any] = {}
            upload = threading.Thread(target=lambda: beside.update(post(base_url, wav)))
            upload.start()
            time.sleep(5)
            report["live_beside_file"] = live(uri, speech, args.talkers)
            upload.join()
            report["ours_beside_talkers"] = scored(beside, reference, audio_s)
            print(f"{args.talkers} talkers beside the file: {report['live_beside_file']}", flush=True)
    p95_alone, p95_beside = report["live_alone"]["p95"], report["live_beside_file"]["p95"]
    if p95_alone and p95_beside:
        report["live_p95_ratio"] = round(p95_beside / p95_alone, 3)
    report["date"] = time.strftime("%Y-%m-%d %H:%M")
    report["cpus"] = os.cpu_count()
    write_report(args.out, report)
    print(f"live p95 beside a file / alone: {report.get('live_p95_ratio')}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
