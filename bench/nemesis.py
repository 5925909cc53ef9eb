"""A nemesis against the Compose stack in real containers (docker-compose.yml + docker-compose.test.yml).

``--sessions`` real file clients stream espeak speech in real time, one session after another, for
``--minutes``, while a nemesis, at random intervals, SIGKILLs and restarts a transcriber, SIGKILLs
and restarts the ingest, restarts Redis, cuts a transcriber off the network and heals it, and
pauses a transcriber past the claim timeout. Every event the clients received is kept; afterwards:

- every segment a session was answered for is answered once, in order, with no hole, and a session
  that ended normally got a final for every sentence it spoke; otherwise it ended with a clear
  reason (an error event, a refusal, a close code, or a connection lost while the ingest was killed);
- no final reaches a session it does not belong to (each session speaks its own sentences);
- no segment stream entry, pending entry or per-session key is left in Redis after the sessions end;
- each service's memory at the end beside its baseline.

    .venv/bin/python -m bench.nemesis [--sessions 4] [--minutes 3] [--seed 1] [--out FILE.json]

Needs the Docker engine (deploy/install-docker.sh) and the images (`make images`); it brings up
its own project on free ports with two finals transcribers and removes it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_report
from services.stack import ROOT, free_port, healthy, wait_until
from tools.speech import ESPEAK_RATE, espeak, to_rate, wer

PROJECT = "stt-nemesis"
FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.test.yml")
KINDS = ["kill_transcriber", "kill_ingest", "restart_redis", "partition_transcriber", "pause_transcriber"]
CLAIM_IDLE_S = 15  # the transcribers' default --claim-idle-ms
SENTENCES = (
    "The blue train leaves the northern station at seven in the morning.",
    "Please send the invoice for the kitchen chairs to my office.",
    "Our garden has three apple trees and a small wooden bench.",
    "The doctor said I should walk for thirty minutes every day.",
    "I lost my umbrella on the bus yesterday evening.",
    "The library closes early on Sundays during the summer.",
    "My brother bought a red bicycle for his daughter's birthday.",
    "We need two more tickets for the concert on Friday night.",
)


def compose_binary() -> str:
    import compose  # type: ignore[import-untyped]

    return str(Path(compose.__file__).parent / "docker-compose")


def sh(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Stack:
    env: dict[str, str]
    port: int

    def compose(self, *args: str, timeout: float = 300) -> str:
        return sh(compose_binary(), "-p", PROJECT, *FILES, *args, timeout=timeout)

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def redis_cli(self, *args: str) -> str:
        (redis,) = self.containers("redis")
        return sh("docker", "exec", redis, "redis-cli", *args)

    def memory(self) -> dict[str, str]:
        out = sh("docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}")
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.startswith(PROJECT)}


@dataclass
class Session:
    index: int
    texts: tuple[str, ...]
    started: float
    ended: float = 0.0
    code: int = -1
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""


def session_audio(index: int, workdir: Path) -> tuple[Path, tuple[str, ...]]:
    """Session ``index``'s own two sentences, each spoken twice, 1.2 s of silence around each."""
    texts = (SENTENCES[(2 * index) % len(SENTENCES)], SENTENCES[(2 * index + 1) % len(SENTENCES)]) * 2
    gap = np.zeros(int(1.2 * ESPEAK_RATE), np.int16)
    parts = [gap]
    for i, text in enumerate(texts):
        parts += [espeak(text, workdir / f"n{index}-{i}.wav"), gap]
    return to_rate(np.concatenate(parts), 16000, workdir, f"nemesis-{index}"), texts


def client_loop(
    stack: Stack, index: int, wav: Path, texts: tuple[str, ...], end: float, out: list[Session]
) -> None:
    client = [
        sys.executable,
        str(ROOT / "clients" / "client_file.py"),
        "--uri",
        f"ws://127.0.0.1:{stack.port}",
    ]
    while time.monotonic() < end:
        session = Session(index, texts, time.monotonic())
        done = subprocess.run(
            [*client, "--wav-path", str(wav), "--json"], capture_output=True, text=True, timeout=300
        )
        session.ended, session.code, session.stderr = time.monotonic(), done.returncode, done.stderr.strip()
        session.events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        out.append(session)
        if done.returncode != 0:
            time.sleep(1)  # refused or cut off: try again shortly, as a client would


def nemesis(stack: Stack, rng: random.Random, end: float, faults: list[dict[str, Any]]) -> None:
    (network,) = [
        n for n in sh("docker", "network", "ls", "--format", "{{.Name}}").split() if n.startswith(PROJECT)
    ]
    kinds: list[str] = []
    while True:
        time.sleep(rng.uniform(4, 10))
        if time.monotonic() >= end:
            return
        if not kinds:  # every kind once per round, in a random order
            kinds = rng.sample(KINDS, len(KINDS))
        kind = kinds.pop()
        target = rng.choice(stack.containers("transcriber")) if "transcriber" in kind else ""
        start = time.monotonic()
        if kind == "kill_transcriber":
            sh("docker", "kill", "--signal", "KILL", target)
            time.sleep(rng.uniform(1, 4))
            sh("docker", "start", target)
        elif kind == "kill_ingest":
            (target,) = stack.containers("ingest")
            sh("docker", "kill", "--signal", "KILL", target)
            time.sleep(1)
            sh("docker", "start", target)
            wait_until(lambda: healthy(stack.port), 120, "the ingest serving again", interval=0.2)
        elif kind == "restart_redis":
            stack.compose("restart", "redis")
        elif kind == "partition_transcriber":
            sh("docker", "network", "disconnect", network, target)
            time.sleep(rng.uniform(3, 8))
            sh("docker", "network", "connect", "--alias", "transcriber", network, target)
        else:  # paused past the claim timeout: another transcriber takes its segments
            sh("docker", "pause", target)
            time.sleep(CLAIM_IDLE_S + 3)
            sh("docker", "unpause", target)
        faults.append({"kind": kind, "target": target[:12], "start": start, "end": time.monotonic()})


def check(sessions: list[Session], faults: list[dict[str, Any]]) -> dict[str, Any]:
    # From the kill until the ingest answered /healthz again (a little after, for clients in flight).
    ingest_kills = [(f["start"], f["end"] + 1) for f in faults if f["kind"] == "kill_ingest"]
    reasons: Counter[str] = Counter(
        s.stderr.splitlines()[-1][:90] for s in sessions if s.code != 0 and s.stderr
    )
    outcome: Counter[str] = Counter()
    problems: list[str] = []
    segments = duplicated = lost = foreign = 0
    for s in sessions:
        finals = [e for e in s.events if e.get("type") == "final"]
        numbers = [f["segment"] for f in finals]
        segments += len(numbers)
        dup = len(numbers) - len(set(numbers))
        duplicated += dup
        if numbers != sorted(set(numbers)) or (
            numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers)))
        ):
            problems.append(
                f"session {s.index}@{s.started:.0f}: finals {numbers} out of order, twice or with a hole"
            )
        for f in finals:
            own = min(wer(t, f["text"]) for t in s.texts)
            other = min(wer(t, f["text"]) for t in SENTENCES if t not in s.texts)
            if other < own:
                foreign += 1
                problems.append(f"session {s.index}: final {f['text']!r} belongs to another session's speech")
        errors = [e for e in s.events if e.get("type") == "error"]
        if s.code == 0 and len(finals) == len(s.texts) and not dup:
            outcome["complete"] += 1
        elif s.code == 0:
            lost += len(s.texts) - len(finals)
            outcome["unclear"] += 1
            problems.append(
                f"session {s.index}: exit 0 with {len(finals)} finals for {len(s.texts)} sentences"
            )
        elif errors or "refused" in s.stderr or "closed the connection" in s.stderr:
            outcome["clear_error"] += 1
        elif any(a <= s.ended and s.started <= b for a, b in ingest_kills) and (
            "connection lost" in s.stderr or not s.events
        ):  # cut off by the kill, or not let in until the ingest was back
            outcome["cut_or_unserved_by_ingest_kill"] += 1
        else:
            outcome["unclear"] += 1
            problems.append(f"session {s.index}: exit {s.code}: {s.stderr[-200:]!r}")
    return {
        "sessions": len(sessions),
        "outcomes": dict(outcome),
        "segments_answered": segments,
        "duplicated": duplicated,
        "lost_in_complete_exits": lost,
        "foreign_finals": foreign,
        "failed_session_reasons": dict(reasons),
        "problems": problems[:20],
    }


def leftovers(stack: Stack) -> dict[str, Any]:
    """What Redis still holds once every session ended and the transcribers drained."""
    found: dict[str, Any] = {"keys": {}, "pending": {}, "length": {}}
    for key in stack.redis_cli("--scan").split():
        kind = stack.redis_cli("type", key).strip()
        found["keys"][key] = kind
        if kind == "stream":
            found["length"][key] = int(stack.redis_cli("xlen", key))
            groups = stack.redis_cli("xinfo", "groups", key).split()
            if "pending" in groups:
                found["pending"][key] = int(groups[groups.index("pending") + 1])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--transcribers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "nemesis.json")
    args = parser.parse_args()
    port = free_port()
    env = {"INGEST_PORT": str(port), "PROMETHEUS_PORT": str(free_port()), "COMPOSE_BAKE": "false"}
    stack = Stack(env, port)
    os.environ.update(env)  # for every compose call
    workdir = Path(sh("mktemp", "-d").strip())
    audio = [session_audio(i, workdir) for i in range(args.sessions)]
    stack.compose(
        "up", "--build", "--wait", "--wait-timeout", "240", "--scale", f"transcriber={args.transcribers}"
    )
    try:
        baseline = stack.memory()
        rng = random.Random(args.seed)
        end = time.monotonic() + 60 * args.minutes
        sessions: list[Session] = []
        faults: list[dict[str, Any]] = []
        clients = [
            threading.Thread(target=client_loop, args=(stack, i, wav, texts, end, sessions))
            for i, (wav, texts) in enumerate(audio)
        ]
        for thread in clients:
            thread.start()
        nemesis(stack, rng, end, faults)
        for thread in clients:
            thread.join()
        # Every fault healed: wait until nothing is left pending, then look at what Redis holds.
        with contextlib.suppress(TimeoutError):  # what stays pending is reported below
            wait_until(
                lambda: not any(leftovers(stack)["pending"].values()), 60, "no pending entries", interval=1
            )
        time.sleep(5)
        report = {
            "command": " ".join(sys.argv),
            "faults": dict(Counter(f["kind"] for f in faults)),
            **check(sessions, faults),
            "redis_after": leftovers(stack),
            "memory_baseline": baseline,
            "memory_end": stack.memory(),
        }
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
    write_report(args.out, report)
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("memory_baseline", "memory_end")}, indent=2)
    )
    clean = (
        not report["duplicated"] and not report["foreign_finals"] and not report["outcomes"].get("unclear")
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
