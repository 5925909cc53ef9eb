"""N real-time talkers against `make run`'s stack, the seed's design or WhisperLive: end of speech -> final.

    .venv/bin/python -m bench.talkers [--systems ours,seed,whisperlive] [--talkers 1,12]
                                     [--env KEY=VALUE ...] [--label NAME] [--out bench/results/talkers.json]

``ours`` starts ``python -m services.stack`` (what `make run` runs, with its defaults unless
``--env`` overrides a setting: ``--env CONTEXT_S=30`` gives the transcribers Whisper's fixed 30 s
window, ``--env EAGER_MS=0`` turns eager endpointing off, ``--env BACKEND=transformers`` the
reference backend) on a private redis-server and waits until a transcriber is serving.
``seed`` starts ``bench/seed_server.py`` (the seed's one-process design, transformers fp32,
torch's 2 threads); ``whisperlive`` starts WhisperLive 0.10's server (PyPI ``whisper-live``, in
its own virtual environment under .cache/, made on first use) with its ``faster_whisper`` backend
on the same CTranslate2 whisper-base directory, ``single_model``, CTranslate2 on 2 threads, its
decoding defaults (beam 5, temperature fallback), ``HF_HUB_OFFLINE=1``. With several systems they
take turns at each talker count.

Every talker streams the six espeak-ng sentences of the tests (1.2 s of silence between them,
16 kHz, 20 ms frames) at real-time pace, the talkers' starts spread evenly over one pass of that
stream. Every utterance's latency is the arrival of its final at the client (for WhisperLive: the
first message in which a segment over it is ``completed``) minus the moment the frame holding its
last sample (the end of the espeak clip) was sent. Also: utterances answered, WER, the server
processes' CPU seconds per minute of audio, their peak RSS, and (ours) the eager-endpointing
counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench.common import Session, match_finals, write_report
from bench.measure import cpu_seconds, spread
from bench.peers import SeedSession, WhisperLiveSession
from services import keys
from services.stack import MODEL_DIR, ROOT, Proc, counter, free_port, port_open, wait_until
from tools.speech import Speech, Stream, wer

SENTENCES = (0, 1, 2, 3, 4, 5)
CHUNK_MS = 20
THREADS = 2
CT2_DIR = ROOT / "models" / "whisper-base-ct2"


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ...: the stack's services."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            children = [int(c) for c in (task / "children").read_text().split()]
            found += children
            todo += children
    return found


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def process_name(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    name = next((a.decode() for a in args if a.startswith((b"services.", b"bench."))), args[0].decode())
    if b"--role" in args:
        name += ":" + args[args.index(b"--role") + 1].decode()
    return name


async def talk(sessions: list[Session], stagger: float, done_timeout: float) -> None:
    async def one(n: int, session: Session) -> None:
        await asyncio.sleep(n * stagger)
        try:
            await session.run(done_timeout)
        except (OSError, ConnectionError, TimeoutError) as exc:
            print(f"talker {n}: {type(exc).__name__}: {exc}", file=sys.stderr)

    await asyncio.gather(*(one(n, s) for n, s in enumerate(sessions)))


@contextlib.contextmanager
def ours(args: argparse.Namespace, workdir: Path, tag: str) -> Iterator[tuple[str, int]]:
    """`make run`'s stack (``services.stack``) on a private redis-server, once a transcriber serves."""
    redis_port, port = free_port(), free_port()
    redis_args = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = dict(kv.split("=", 1) for kv in args.env)
    # METRICS_PORT reaches only the ingest: the stack gives each transcriber its own port.
    env |= {"REDIS_URL": redis_url, "PORT": str(port), "METRICS_PORT": str(args.metrics_port)}
    env |= {"LOG_LEVEL": "WARNING"}
    with child("redis", [*redis_args, "--appendonly", "no"], {}, workdir / f"redis-{tag}.log"):
        wait_until(lambda: port_open(redis_port), 10, "redis-server")
        cmd = [sys.executable, "-m", "services.stack"]
        with child("stack", cmd, env, workdir / f"stack-{tag}.log") as stack:
            with redis.Redis.from_url(redis_url) as client:

                def serving() -> bool:
                    return port_open(port) and any(client.scan_iter(match=keys.ALIVE_PATTERN))

                wait_until(serving, 180, "the stack to serve")
            yield f"ws://127.0.0.1:{port}", stack.popen.pid


@contextlib.contextmanager
def seed(args: argparse.Namespace, workdir: Path, tag: str) -> Iterator[tuple[str, int]]:
    """The seed's design (bench/seed_server.py): the transformers model in the event loop."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.seed_server", "--model-id", str(MODEL_DIR), "--port", str(port)]
    with child("seed", cmd, {}, workdir / f"seed-{tag}.log") as server:
        wait_until(lambda: port_open(port), 120, "the seed server to listen")
        yield f"ws://127.0.0.1:{port}", server.popen.pid


@contextlib.contextmanager
def child(name: str, cmd: list[str], env: dict[str, str], log: Path) -> Iterator[Proc]:
    """A real process for the length of a ``with``; SIGTERM and up to 60 s to stop after it (the
    stack stops its children in turn)."""
    proc = Proc(name, cmd, log, env)
    try:
        yield proc
    finally:
        proc.stop(timeout=60)


WHISPERLIVE_VENV = ROOT / ".cache" / "whisperlive-venv"
# WhisperLive's server imports these for its faster_whisper backend; whisper-live itself goes in
# with --no-deps (its other requirements are for backends not compared here: TensorRT, OpenVINO).
WHISPERLIVE_PACKAGES = (
    "torch==2.13.0",  # the CPU wheel on this machine's disk
    "faster-whisper==1.2.0",
    "requests",  # faster-whisper 1.2 imports it; huggingface_hub no longer brings it
    "onnxruntime",
    "fastapi",
    "uvicorn",
    "websockets",
    "numpy<2.5",
    "scipy",
    "soundfile",
    "prometheus-client",
)
WHISPERLIVE_SERVER = """
import sys
from whisper_live.server import TranscriptionServer
TranscriptionServer().run("127.0.0.1", int(sys.argv[1]), backend="faster_whisper",
    faster_whisper_custom_model_path=sys.argv[2], single_model=True, max_clients=256,
    max_connection_time=3600)
"""


def whisperlive_python(workdir: Path) -> Path:
    """WhisperLive 0.10 in its own virtual environment (made once, under .cache/)."""
    python = WHISPERLIVE_VENV / "bin" / "python"
    ready, wanted = WHISPERLIVE_VENV / ".ready", "\n".join(WHISPERLIVE_PACKAGES)
    if not ready.is_file() or ready.read_text() != wanted:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(WHISPERLIVE_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *WHISPERLIVE_PACKAGES], check=True)
        # silero-vad only for its silero_vad.onnx, which WhisperLive's live VAD loads.
        subprocess.run([*pip, "--no-deps", "whisper-live==0.10.0", "silero-vad==6.2.3"], check=True)
        ready.write_text(wanted)
    return python


@contextlib.contextmanager
def whisperlive(args: argparse.Namespace, workdir: Path, tag: str) -> Iterator[tuple[str, int]]:
    """WhisperLive's server (faster_whisper backend, single model) on our CTranslate2 whisper-base.

    Its live VAD loads silero_vad.onnx from ~/.cache/whisper-live/ and would download it: HOME
    points at a folder holding the copy the silero-vad package ships. CTranslate2 gets the same
    2 threads as the others (WhisperLive passes none; CTranslate2 would take 4).
    """
    python = whisperlive_python(workdir)
    home = workdir / "whisperlive-home"
    (home / ".cache" / "whisper-live").mkdir(parents=True, exist_ok=True)
    find = (
        "import importlib.util; print(importlib.util.find_spec('silero_vad').submodule_search_locations[0])"
    )
    package = subprocess.run([str(python), "-c", find], capture_output=True, text=True, check=True)
    vad = Path(package.stdout.strip()) / "data" / "silero_vad.onnx"
    shutil.copy(vad, home / ".cache" / "whisper-live" / "silero_vad.onnx")
    port = free_port()
    env = {"HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}
    cmd = [str(python), "-c", WHISPERLIVE_SERVER, str(port), str(CT2_DIR)]
    with child("whisperlive", cmd, env, workdir / f"whisperlive-{tag}.log") as server:
        wait_until(lambda: port_open(port), 120, "WhisperLive to listen")
        uri = f"ws://127.0.0.1:{port}"
        # It loads the model at the first connection: that one is not timed.
        warm = WhisperLiveSession(uri, b"\0\0" * 16000, 16000, CHUNK_MS, model_dir=str(CT2_DIR))
        asyncio.run(warm.run(done_timeout=60))
        yield uri, server.popen.pid


SYSTEMS = {"ours": ours, "seed": seed, "whisperlive": whisperlive}


def session_for(system: str, uri: str, stream: Stream) -> Session:
    if system == "seed":
        return SeedSession(uri, stream.pcm, stream.rate, CHUNK_MS, expected=len(stream.utterances))
    if system == "whisperlive":
        return WhisperLiveSession(uri, stream.pcm, stream.rate, CHUNK_MS, model_dir=str(CT2_DIR))
    return Session(uri, stream.pcm, stream.rate, CHUNK_MS)


def eager_guesses(port: int) -> dict[str, float]:
    """The ingest's eager endpointing counters: guesses queued, confirmed and wasted."""
    outcomes = ("queued", "confirmed", "wasted")
    return {o: counter(port, "stt_eager_guesses_total", outcome=o) for o in outcomes}


def end_to_final(sessions: list[Session], stream: Stream) -> tuple[list[float], int, list[str]]:
    """Each utterance's latency, end of speech (its last sample sent) -> its last final; how many
    utterances were answered; each one's text."""
    latencies: list[float] = []
    answered, texts = 0, []
    for session in sessions:
        mine, _ = match_finals(session.finals, stream.utterances)
        for (_, end), got in zip(stream.utterances, mine, strict=True):
            texts.append(" ".join(r.event["text"] for r in got))
            if got and session.sent:
                answered += 1
                latencies.append(got[-1].at - session.sent_at(end))
    return latencies, answered, texts


def measure(
    args: argparse.Namespace, system: str, speech: Speech, talkers: int, workdir: Path
) -> dict[str, Any]:
    stream = speech.stream(16000, SENTENCES)
    audio_s = len(stream.pcm) / 2 / stream.rate
    with SYSTEMS[system](args, workdir, f"{system}-{talkers}") as (uri, root):
        pids = [root, *descendants(root)]
        names = {pid: f"{process_name(pid)} ({n})" for n, pid in enumerate(pids)}
        cpu_before = {pid: cpu_seconds(pid) for pid in pids}
        sessions = [session_for(system, uri, stream) for _ in range(talkers)]
        started = time.monotonic()
        asyncio.run(talk(sessions, audio_s / talkers, args.done_timeout))
        wall = time.monotonic() - started
        cpu = {names[pid]: cpu_seconds(pid) - cpu_before[pid] for pid in pids}
        rss = {names[pid]: round(peak_rss_mib(pid)) for pid in pids}
        eager = eager_guesses(args.metrics_port) if system == "ours" else {}
    latencies, answered, texts = end_to_final(sessions, stream)
    utterances = talkers * len(stream.utterances)
    result: dict[str, Any] = {
        "talkers": talkers,
        "utterances": utterances,
        "answered": answered,
        "errors": sum(len(s.errors) for s in sessions),
        "wer": round(wer(" ".join(stream.texts * talkers), " ".join(texts)), 3),
        "wall_s": round(wall, 1),
        "cpu_s_per_audio_min": round(sum(cpu.values()) / (talkers * audio_s / 60), 1),
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "peak_rss_mib": rss,
        "latency_s": [round(x, 3) for x in latencies],
        "texts": texts,
        "eager_guesses": eager,
    }
    if latencies:
        result |= spread(latencies, (50, 95), 3) | {"max": round(max(latencies), 3)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--systems", default="ours", help=f"comma-separated of {', '.join(SYSTEMS)}: they take turns"
    )
    parser.add_argument("--talkers", default="1,12", help="comma-separated talker counts, one run each")
    parser.add_argument(
        "--done-timeout",
        type=float,
        default=180,
        help="seconds a session may wait for its finals after its audio",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (repeatable)")
    parser.add_argument("--label", default="make run defaults", help="what this run's settings are")
    parser.add_argument("--metrics-port", type=int, default=free_port(), help="the ingest's /metrics port")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "talkers.json")
    args = parser.parse_args()
    unknown = set(args.systems.split(",")) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    report: dict[str, Any] = {"runs": []}
    if args.out.is_file():  # runs of other settings accumulate in one file
        report = json.loads(args.out.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        speech = Speech(workdir)
        for talkers, system in itertools.product(
            [int(x) for x in args.talkers.split(",")], args.systems.split(",")
        ):
            result = measure(args, system, speech, talkers, workdir)
            label = args.label if system == "ours" else system
            result |= {"system": system, "label": label, "env": args.env if system == "ours" else []}
            result["date"] = time.strftime("%Y-%m-%d %H:%M")
            result["load_average_1min"] = round(os.getloadavg()[0], 2)
            report["runs"].append(result)
            write_report(args.out, report)
            print(
                f"{label} | {talkers:2d} talkers: p50 {result.get('p50', '-')} s, "
                f"p95 {result.get('p95', '-')} s, max {result.get('max', '-')} s, answered "
                f"{result['answered']}/{result['utterances']}, WER {result['wer']}, "
                f"{result['cpu_s_per_audio_min']} CPU-s/audio-min, peak RSS {result['peak_rss_mib']}",
                flush=True,
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
