"""End-of-speech -> text latency and WER of the whole pipeline, for several VAD silence settings.

Starts a real redis-server, one whisper-base transcriber and, per setting, one ingest; streams
espeak-ng sentences separated by silence at real-time pace from one client and times, for each
sentence, the moment its last sample was sent to the moment its transcript arrived. Also measures
the pauses inside real Hindi utterances, which a segment must bridge without being cut.

    .venv/bin/python -m bench.latency [--silence-ms 300,450,600,800] [--out bench/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import webrtcvad

from bench.common import match_finals, save_report, stream_real_time
from services.stack import POOL, ROOT, Stack, start_ingest
from tools.speech import HINDI_CLIPS, Speech, Stream, wer


def measure(uri: str, stream: Stream, chunk_ms: int) -> dict[str, Any]:
    session = asyncio.run(stream_real_time(uri, stream, chunk_ms))
    mine, _ = match_finals(session.finals, stream.utterances)
    latencies, texts = [], []
    for (_, end), got in zip(stream.utterances, mine, strict=True):
        texts.append(" ".join(r.event["text"] for r in got))
        if got:
            latencies.append(got[-1].at - session.sent_at(end))
    return {
        "segments": len(session.finals),
        "utterances": len(stream.utterances),
        "wer": wer(" ".join(stream.texts), " ".join(texts)),
        "eos_to_text_s": [round(x, 3) for x in latencies],
        "server_latency_s": [r.event["latency"] for r in session.finals],
    }


def pauses_inside_speech(paths: list[Path]) -> list[int]:
    """Runs of non-speech frames (ms) between the first and last voiced frame of each clip."""
    vad = webrtcvad.Vad(3)
    runs: list[int] = []
    for path in paths:
        samples, rate = sf.read(path, dtype="float32")
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        size = rate * 30 // 1000 * 2
        flags = [vad.is_speech(pcm[i : i + size], rate) for i in range(0, len(pcm) - size + 1, size)]
        voiced = [i for i, f in enumerate(flags) if f]
        run = 0
        for flag in flags[voiced[0] : voiced[-1] + 1] if voiced else []:
            if flag and run:
                runs.append(run * 30)
            run = 0 if flag else run + 1
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silence-ms", default="300,450,600,800")
    parser.add_argument("--chunk-ms", type=int, default=20, choices=[10, 20, 30])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        speech = Speech(workdir)
        stream = speech.stream(16000)
        stack = Stack.base(workdir)
        # This measures one ingest per setting: the stack's own ingest is not used.
        stack.ingest.stop()
        redis_url, name = stack.redis_url, POOL
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"),
            "model": name,
            "chunk_ms": args.chunk_ms,
            "settings": {},
        }
        try:
            for silence in [int(x) for x in args.silence_ms.split(",")]:
                uri, ingest = start_ingest(redis_url, name, "--silence-ms", str(silence))
                try:
                    report["settings"][silence] = result = measure(uri, stream, args.chunk_ms)
                finally:
                    ingest.stop()
                lat = result["eos_to_text_s"]
                print(
                    f"silence {silence:4d} ms: {result['segments']} segments for {result['utterances']} "
                    f"sentences, WER {result['wer']:.3f}, end of speech -> text "
                    f"median {statistics.median(lat):.2f} s, max {max(lat):.2f} s",
                    flush=True,
                )
        finally:
            stack.stop()
    runs = pauses_inside_speech(HINDI_CLIPS)
    report["hindi_pauses_ms"] = sorted(runs)
    print(f"pauses inside the {len(HINDI_CLIPS)} real Hindi clips (ms): {sorted(runs)}")
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
