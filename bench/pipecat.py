"""A voice-agent framework end to end: Pipecat's Deepgram plugin against `make run`'s stack.

    .venv/bin/python -m bench.pipecat [--out bench/results/pipecat.json]

Pipecat (``pipecat-ai[deepgram]``, pinned below) lives in its own virtual environment under
.cache/, made on first use (about a minute): its install would move packages that
``requirements.txt`` pins (soundfile, protobuf). ``tests/test_pipecat.py`` runs the same in
``make test``. In a child
process of that environment a Pipecat pipeline of Pipecat's own ``VADProcessor``
(``SileroVADAnalyzer``), ``DeepgramSTTService(base_url=<our ingest>)`` and a collector is fed
the six espeak-ng sentences of ``bench.talkers`` (1.2 s of silence between them) as
``InputAudioRawFrame``s of 20 ms at real-time pace; Pipecat's VAD stop makes the plugin send
``Finalize``. The collector notes each ``TranscriptionFrame`` (its text, and ``from_finalize``
of the Deepgram result it carries) and each VAD stop, with the time.

Reported: the WER of the finals against the sentences, how many finals came from a
``Finalize``, and each VAD stop -> the next final. Exit status 1 when the pipeline gave no text
or the WER is above 0.25.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import save_report, side_venv
from bench.measure import spread
from bench.talkers import SENTENCES, ours
from services.stack import ROOT, free_port
from tools.speech import Speech, wer

VENV = ROOT / ".cache" / "pipecat-venv"
PACKAGES = ("pipecat-ai[deepgram]==1.14.0",)
MAX_WER = 0.25
TAIL_S = 4.0  # silence after the last sentence, for its final to come back
CHILD = """
import asyncio, json, sys, time, wave

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    EndFrame, InputAudioRawFrame, TranscriptionFrame, VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.deepgram.stt import DeepgramSTTService

base_url, wav, tail_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
notes = []


class Collect(FrameProcessor):
    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            finalize = bool(getattr(frame.result, "from_finalize", False))
            notes.append({"kind": "final", "text": frame.text, "from_finalize": finalize,
                          "t": time.monotonic()})
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            notes.append({"kind": "vad_stop", "t": time.monotonic()})
        await self.push_frame(frame, direction)


async def feed(task, pcm, rate):
    step = rate // 50 * 2  # 20 ms of 16-bit mono
    started = time.monotonic()
    for i, at in enumerate(range(0, len(pcm), step)):
        await task.queue_frame(InputAudioRawFrame(audio=pcm[at:at + step], sample_rate=rate, num_channels=1))
        await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - time.monotonic()))
    await task.queue_frame(EndFrame())


async def main():
    with wave.open(wav) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    pcm += bytes(int(tail_s * rate) * 2)
    stt = DeepgramSTTService(api_key="bench", base_url=base_url, sample_rate=rate)
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(sample_rate=rate))
    task = PipelineTask(Pipeline([vad, stt, Collect()]),
                        params=PipelineParams(audio_in_sample_rate=rate))
    await asyncio.gather(PipelineRunner(handle_sigint=False).run(task), feed(task, pcm, rate))
    print(json.dumps(notes))


asyncio.run(main())
"""


def run(uri: str, wav: Path) -> list[dict[str, Any]]:
    """The child's notes: finals and VAD stops, in order."""
    python = side_venv(VENV, PACKAGES)
    cmd = [str(python), "-c", CHILD, uri, str(wav), str(TAIL_S)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the Pipecat pipeline failed ({done.returncode}): {done.stderr[-3000:]}")
    notes: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return notes


def stop_to_final(notes: list[dict[str, Any]]) -> list[float]:
    """Each VAD stop -> the first final after it (a stop with no final after it counts none)."""
    waits, stop = [], None
    for note in notes:
        if note["kind"] == "vad_stop":
            stop = note["t"]
        elif stop is not None:
            waits.append(note["t"] - stop)
            stop = None
    return waits


def summary(notes: list[dict[str, Any]], texts: Sequence[str]) -> dict[str, Any]:
    """What the pipeline heard of ``texts``: finals, how many a ``Finalize`` answered, WER, waits."""
    finals = [n for n in notes if n["kind"] == "final"]
    text = " ".join(n["text"] for n in finals)
    return {
        "sentences": len(texts),
        "finals": len(finals),
        "from_finalize": sum(n["from_finalize"] for n in finals),
        "vad_stops": sum(n["kind"] == "vad_stop" for n in notes),
        "wer": round(wer(" ".join(texts), text), 3),
        "vad_stop_to_final_s": spread(stop_to_final(notes), (50, 95), 3),
        "text": text,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our stack (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipecat.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stream = Speech(workdir).stream(16000, SENTENCES)
        stack_args = argparse.Namespace(env=args.env, metrics_port=free_port())
        with ours(stack_args, workdir, "pipecat") as (uri, _):
            notes = run(uri, stream.path)
    report: dict[str, Any] = {"command": ".venv/bin/python -m bench.pipecat", "packages": PACKAGES}
    report |= summary(notes, stream.texts)
    save_report(args.out, report, show=True)
    return 0 if report["finals"] and report["wer"] <= MAX_WER else 1


if __name__ == "__main__":
    raise SystemExit(main())
