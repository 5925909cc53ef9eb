"""Does speaking Deepgram's or OpenAI's protocol cost latency? End of speech -> final, per protocol.

    .venv/bin/python -m bench.protocols [--protocols native,deepgram,flux,openai] [--concurrency 2]
                                        [--env KEY=VALUE ...] [--out bench/results/protocols.json]
    .venv/bin/python -m bench.protocols --transcriber echo [--rounds 3] [--echo-model-time 0.25]
                                        [--out bench/results/protocols-echo.json]

Starts `make run`'s stack (``python -m services.stack``, its defaults unless ``--env`` overrides
one) on a private redis-server, as ``bench.fidelity`` does. Each real recording of
``bench/evalset`` (material nothing was tuned on) is streamed once per protocol, in its own
session, at real-time pace in 20 ms frames, followed by 1.5 s of silence; the protocols take
turns utterance by utterance, so they share the machine's state. An utterance's latency is the
arrival of its session's last final (ours: ``final``; Deepgram: ``Results`` with ``is_final``;
Flux: ``EndOfTurn``; OpenAI Realtime: ``...input_audio_transcription.completed``) minus the
moment the frame holding the recording's last sample was sent. Reported per protocol: p50/p95
latency and how many utterances got text. ``native-partials`` is ours with ``partials=1`` (Flux
and OpenAI Realtime sessions always get partials: their like for like); ``native-words`` ours with
``words=1`` (Deepgram's results always carry timed words: its like for like).

``--transcriber echo`` measures what the protocols' own paths cost, without the model's noise:
the transcribers are ``bench.echo_worker`` (the real consume loop, a model that answers every
batch in ``--echo-model-time`` seconds; one transcriber per protocol, so none waits for another
session's segment, and eager guesses whatever the backlog), and each utterance is streamed
through every protocol at the same moment,
``--rounds`` times over the evalset. Each protocol's latency is then paired, utterance by
utterance, with its like for like's (ours, with partials or words as above); reported: the
difference of their p50s and the median of the paired differences with its 95 % bootstrap
interval.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from bench.common import save_report
from bench.fidelity import EVALSET, Utterance, load_evalset, stack
from bench.measure import percentile, spread
from services.audio import resample_pcm16
from services.stack import POOL, ROOT, Stack

RATE = 16000
FRAME_S = 0.02
TAIL_S = 1.5
# Each protocol's like for like on our own protocol: what its sessions ask of the pipeline.
LIKE = {"deepgram": "native-words", "flux": "native-partials", "openai": "native-partials"}


@dataclass(frozen=True)
class Wire:
    """How one protocol is spoken: its path, its audio frames, its end of audio, its finals."""

    path: str
    rate: int
    frame: Callable[[bytes], str | bytes]
    end: str
    final: Callable[[dict[str, Any]], bool]


def _openai_audio(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


WIRES = {
    "native": Wire("/?sample_rate=16000", RATE, bytes, '{"type": "eof"}', lambda m: m.get("type") == "final"),
    # Ours with partials: what Flux and OpenAI Realtime sessions always ask for, their like for like.
    "native-partials": Wire(
        "/?sample_rate=16000&partials=1", RATE, bytes, '{"type": "eof"}', lambda m: m.get("type") == "final"
    ),
    # Ours with word timings: what Deepgram's results always carry, so its like for like.
    "native-words": Wire(
        "/?sample_rate=16000&words=1", RATE, bytes, '{"type": "eof"}', lambda m: m.get("type") == "final"
    ),
    "deepgram": Wire(
        "/v1/listen?model=nova-3&encoding=linear16&sample_rate=16000",
        RATE,
        bytes,
        '{"type": "CloseStream"}',
        lambda m: m.get("type") == "Results" and bool(m.get("is_final")),
    ),
    "flux": Wire(
        "/v2/listen?model=flux-general-en&encoding=linear16&sample_rate=16000",
        RATE,
        bytes,
        '{"type": "CloseStream"}',
        lambda m: m.get("type") == "TurnInfo" and m.get("event") == "EndOfTurn",
    ),
    "openai": Wire(
        "/v1/realtime?intent=transcription",
        24000,
        _openai_audio,
        '{"type": "input_audio_buffer.commit"}',
        lambda m: m.get("type") == "conversation.item.input_audio_transcription.completed",
    ),
}


def text_of(message: dict[str, Any]) -> str:
    if "transcript" in message:
        return str(message["transcript"])
    if "channel" in message and isinstance(message["channel"], dict):
        return str(message["channel"]["alternatives"][0]["transcript"])
    return str(message.get("text", ""))


async def one(uri: str, wire: Wire, utt: Utterance) -> float | None:
    """Stream one utterance; the latency of its last final with text, or None when none came."""
    # Band-limited, so that every protocol hears the same sound (linear interpolation, used before
    # 2026-12-07, dulled the highs enough to move where some utterances' speech was heard to end).
    speech = resample_pcm16(utt.pcm(), RATE, wire.rate)
    pcm = speech + bytes(int(TAIL_S * wire.rate) * 2)
    frame = int(wire.rate * FRAME_S) * 2
    last_sample_sent = 0.0
    answered: list[float] = []
    headers = {"Authorization": "Bearer x"}
    async with connect(uri + wire.path, additional_headers=headers, max_size=None) as ws:

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if wire.final(message) and text_of(message).strip():
                    answered.append(time.monotonic())

        reader = asyncio.create_task(read())
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), frame)):
            await ws.send(wire.frame(pcm[offset : offset + frame]))
            if offset < len(speech) <= offset + frame:
                last_sample_sent = time.monotonic()
            await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_S - time.monotonic()))
        await ws.send(wire.end)
        await asyncio.sleep(3.0)  # every final of this utterance is in by now (p95 is far below)
        reader.cancel()
    return answered[-1] - last_sample_sent if answered else None


async def run_all(
    uri: str, utts: list[Utterance], names: list[str], concurrency: int
) -> dict[str, list[float | None]]:
    gate = asyncio.Semaphore(concurrency)
    latencies: dict[str, list[float | None]] = {name: [] for name in names}

    async def timed(name: str, utt: Utterance) -> None:
        async with gate:
            latencies[name].append(await one(uri, WIRES[name], utt))

    await asyncio.gather(*(timed(name, utt) for utt in utts for name in names))
    return latencies


async def run_paired(
    uri: str, utts: list[Utterance], names: list[str], rounds: int
) -> dict[str, list[float | None]]:
    """Each utterance through every protocol at once, ``rounds`` times over: latencies by protocol,
    in the same order, so that the n-th of each were streamed together."""
    latencies: dict[str, list[float | None]] = {name: [] for name in names}
    for _ in range(rounds):
        for utt in utts:
            got = await asyncio.gather(*(one(uri, WIRES[name], utt) for name in names))
            for name, latency in zip(names, got, strict=True):
                latencies[name].append(latency)
    return latencies


def paired(
    values: list[float | None], like: list[float | None], draws: int = 10_000
) -> dict[str, float | int | list[float]]:
    """A protocol's latencies against its like for like's, streamed together: the median of the
    paired differences (ms) and its 95 % bootstrap interval."""
    diffs = np.array([a - b for a, b in zip(values, like, strict=True) if a is not None and b is not None])
    rng = np.random.default_rng(0)
    medians = np.median(rng.choice(diffs, (draws, len(diffs))), axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return {
        "pairs": len(diffs),
        "median_diff_ms": round(float(np.median(diffs)) * 1000, 1),
        "ci95_ms": [round(float(low) * 1000, 1), round(float(high) * 1000, 1)],
    }


@contextlib.contextmanager
def echo_stack(workdir: Path, transcribers: int, model_time: float) -> Iterator[str]:
    """redis-server, one ingest (its defaults) and ``transcribers`` echo transcribers plus one for
    partials, each answering a batch in ``model_time`` seconds. The ingest makes eager guesses
    whatever the backlog: every protocol's session pauses at the same moment here, and with the
    default ``--eager-max-backlog`` (1) the last ones to get there would be refused their guess
    for the others' (the echo pool has a transcriber for each, so none waits)."""
    stack = Stack.base(workdir, transcribers=0, ingest_flags=("--eager-max-backlog", "1000"))
    try:
        env = {"ECHO_MODEL_TIME": f"{model_time},0"}
        for role in ["finals"] * transcribers + ["partials"]:
            flags = ("--serve-as", POOL, "--role", role, "--log-level", "WARNING")
            stack.start_transcriber("echo", *flags, module="bench.echo_worker", env=env)
        stack.wait_serving(POOL, transcribers + 1, timeout=60)
        yield stack.uri
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", default=",".join(WIRES), help=f"some of {', '.join(WIRES)}")
    parser.add_argument("--concurrency", type=int, default=2, help="sessions streaming at once (whisper)")
    parser.add_argument("--transcriber", choices=("whisper", "echo"), default="whisper")
    parser.add_argument("--rounds", type=int, default=3, help="times over the evalset (echo)")
    parser.add_argument("--echo-model-time", type=float, default=0.25, help="seconds per batch (echo)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (make run's)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/protocols[-echo].json")
    args = parser.parse_args(argv)
    names = args.protocols.split(",")
    if set(names) - set(WIRES):
        parser.error(f"unknown protocols {sorted(set(names) - set(WIRES))}")
    echo = args.transcriber == "echo"
    if echo:
        names += [LIKE[name] for name in names if name in LIKE and LIKE[name] not in names]
    utts = load_evalset(EVALSET)
    with tempfile.TemporaryDirectory() as workdir:
        if echo:
            with echo_stack(Path(workdir), len(names), args.echo_model_time) as uri:
                latencies = asyncio.run(run_paired(uri, utts, names, args.rounds))
        else:
            with stack(args.env, Path(workdir), "protocols") as uri:
                latencies = asyncio.run(run_all(uri, utts, names, args.concurrency))
    report: dict[str, Any] = {
        "command": shlex.join(
            ["python", "-m", "bench.protocols", *(argv if argv is not None else sys.argv[1:])]
        ),
        "utterances": len(utts),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    for name, values in latencies.items():
        got = [v for v in values if v is not None]
        report[name] = {"answered": len(got), "latency_s": spread(got, (50, 95), 3)}
        like = LIKE.get(name)
        if echo and like in latencies and got:
            theirs = [v for v in latencies[like] if v is not None]
            p50_diff = percentile(got, 50) - percentile(theirs, 50)
            report[name]["against"] = {"like": like, "p50_diff_ms": round(p50_diff * 1000, 1)}
            report[name]["against"] |= paired(values, latencies[like])
    print(json.dumps(report, indent=2))
    out = args.out or ROOT / "bench" / "results" / f"protocols{'-echo' if echo else ''}.json"
    save_report(out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
