"""A nemesis against the Compose stack in real containers (docker-compose.yml + docker-compose.test.yml).

``--sessions`` real file clients stream espeak speech in real time, one session after another,
while a nemesis, at random intervals, SIGKILLs and restarts a transcriber, SIGKILLs and restarts
the ingest, restarts Redis, cuts a transcriber off the network and heals it, and pauses a
transcriber past the claim timeout: every kind once per round, in a random order, for
``--minutes`` and at least one round. Every event the clients received is kept; afterwards:

- every segment a session was answered for is answered once, in order, with no hole, and a session
  that ended normally got a final for every sentence it spoke; otherwise it ended with a clear
  reason (an error event, a refusal, a close code, or a connection lost while the ingest was killed);
- no final reaches a session it does not belong to (each session speaks its own sentences);
- no segment stream entry, pending entry, dead letter, result channel or per-session key is left
  in Redis after the sessions end;
- each container's memory (MiB) at the start, at its peak (sampled every 30 s) and at the end.

    .venv/bin/python -m bench.nemesis [--sessions 4] [--minutes 3] [--seed 1] [--out FILE.json]

Starts the Docker engine and builds the local base image when missing (deploy/install-docker.sh,
deploy/docker/base-image.sh); builds what else it needs and brings up its own project on free ports
with two finals transcribers, and removes it afterwards. tests/test_nemesis.py runs a short one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_report
from services import keys
from services.stack import ROOT, free_port, healthy, wait_until
from tools.speech import ESPEAK_RATE, espeak, to_rate, wer

PROJECT = "stt-nemesis"  # the bench's Compose project; tests/test_nemesis.py runs its own
FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.test.yml")
KINDS = ("kill_transcriber", "kill_ingest", "restart_redis", "partition_transcriber", "pause_transcriber")
CLAIM_IDLE_S = 15  # the transcribers' default --claim-idle-ms
SESSION_TIMEOUT_S = 300  # one session's audio is ~20 s in real time
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
# What lives in Redis as long as the transcribers do: their liveness keys and their pools' streams
# (which must be empty, and have nothing pending, once every session ended).
SERVICE_KEYS = re.compile(rf"^{keys.PREFIX}:(alive|consumer|segments|partials|files):")


@dataclass(frozen=True)
class Plan:
    """What one nemesis run does."""

    sessions: int = 4
    minutes: float = 3.0
    seed: int = 1
    transcribers: int = 2
    gap_s: tuple[float, float] = (4.0, 10.0)  # the quiet time between two faults
    project: str = PROJECT  # the Compose project: runs side by side need their own


def compose_binary() -> str:
    import compose  # type: ignore[import-untyped]

    return str(Path(compose.__file__).parent / "docker-compose")


def sh(*args: str, timeout: float = 120) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def prepare_engine() -> None:
    """A running Docker engine and the local base image (each script does nothing when present)."""
    for script in ("install-docker.sh", "docker/base-image.sh"):
        try:
            sh(str(ROOT / "deploy" / script), timeout=900)
        except RuntimeError as exc:
            raise RuntimeError(f"no Docker engine or base image for the nemesis: {exc}") from None


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    port: int

    def compose(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [compose_binary(), "-p", self.project, *FILES, *args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def docker_ls(self, what: str, field: str) -> list[str]:
        """``docker network|ps ls`` of this project only (Compose labels what it makes)."""
        label = f"label=com.docker.compose.project={self.project}"
        return sh("docker", what, "ls", "--filter", label, "--format", field).split()

    def network(self) -> str:
        networks = self.docker_ls("network", "{{.Name}}")
        if len(networks) != 1:
            raise RuntimeError(f"project {self.project} has networks {networks}, not one")
        return networks[0]

    def redis_cli(self, *args: str) -> str:
        (redis,) = self.containers("redis")
        return sh("docker", "exec", redis, "redis-cli", *args)

    def memory(self) -> dict[str, float]:
        """Each running container's memory in MiB, by its name without the project's prefix."""
        ids = self.docker_ls("container", "{{.ID}}")
        if not ids:  # `docker stats` of no container shows them all
            return {}
        out = sh("docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *ids)
        rows = [line.split()[:2] for line in out.splitlines()]
        return {name.removeprefix(f"{self.project}-"): mib(usage) for name, usage in rows}


def mib(usage: str) -> float:
    """docker stats' memory use ("283.6MiB", "1.2GiB", "900KiB", "0B") in MiB."""
    found = re.fullmatch(r"([\d.]+)([KMG]i)?B", usage)
    if not found:
        raise ValueError(f"not a docker stats memory figure: {usage!r}")
    scale = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}.get(found[2] or "", 1 / 2**20)
    return round(float(found[1]) * scale, 1)


Memory = dict[str, float]  # MiB by container


def memory_figures(baseline: Memory, peak: Memory, end: Memory) -> dict[str, Memory]:
    """Baseline, peak (the samples' and the end's highest) and end, each by container, in MiB."""
    peak = {name: max(used, end.get(name, 0.0)) for name, used in peak.items()}
    return {"baseline": baseline, "peak": peak, "end": end}


def watch_memory(stack: Stack, stop: threading.Event, peak: Memory) -> None:
    """Every container's highest memory seen, sampled every 30 s until ``stop``."""
    while not stop.wait(30):
        for name, used in stack.memory().items():
            peak[name] = max(used, peak.get(name, 0.0))


@contextlib.contextmanager
def stack_up(project: str, transcribers: int) -> Iterator[Stack]:
    """The project up on free ports, healthy, with ``transcribers`` finals transcribers; removed after."""
    port = free_port()
    env = {"INGEST_PORT": str(port), "PROMETHEUS_PORT": str(free_port()), "COMPOSE_BAKE": "false"}
    stack = Stack(project, env, port)
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")  # a left-over run
    try:
        stack.compose(
            "up", "--build", "--wait", "--wait-timeout", "240", "--scale", f"transcriber={transcribers}"
        )
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")


# --- the sessions ---------------------------------------------------------------------------------


@dataclass
class Session:
    index: int
    texts: tuple[str, ...]
    started: float
    ended: float = 0.0
    code: int = -1
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "final"]


def session_audio(index: int, workdir: Path) -> tuple[Path, tuple[str, ...]]:
    """Session ``index``'s own two sentences, each spoken twice, 1.2 s of silence around each."""
    texts = (SENTENCES[(2 * index) % len(SENTENCES)], SENTENCES[(2 * index + 1) % len(SENTENCES)]) * 2
    gap = np.zeros(int(1.2 * ESPEAK_RATE), np.int16)
    parts = [gap]
    for i, text in enumerate(texts):
        parts += [espeak(text, workdir / f"n{index}-{i}.wav"), gap]
    return to_rate(np.concatenate(parts), 16000, workdir, f"nemesis-{index}"), texts


def one_session(stack: Stack, index: int, wav: Path, texts: tuple[str, ...]) -> Session:
    """The real file client, run once to its end (a hung one counts as exit -9, an unclear ending)."""
    client = [
        sys.executable,
        str(ROOT / "clients" / "client_file.py"),
        "--uri",
        f"ws://127.0.0.1:{stack.port}",
    ]
    session = Session(index, texts, time.monotonic())
    try:
        done = subprocess.run(
            [*client, "--wav-path", str(wav), "--json"],
            capture_output=True,
            text=True,
            timeout=SESSION_TIMEOUT_S,
        )
        session.code, out, session.stderr = done.returncode, done.stdout, done.stderr.strip()
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        session.code, session.stderr = -9, f"no end within {SESSION_TIMEOUT_S} s"
    session.ended = time.monotonic()
    session.events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return session


def client_loop(
    stack: Stack, index: int, audio: tuple[Path, tuple[str, ...]], stop: threading.Event, out: list[Session]
) -> None:
    """Sessions one after another until ``stop``; after a failed one, a short wait, as a client would."""
    while not stop.is_set():
        session = one_session(stack, index, *audio)
        out.append(session)
        if session.code != 0:
            time.sleep(1)


# --- the nemesis ----------------------------------------------------------------------------------


def kill_transcriber(stack: Stack, rng: random.Random, target: str) -> None:
    sh("docker", "kill", "--signal", "KILL", target)
    time.sleep(rng.uniform(1, 4))
    sh("docker", "start", target)


def kill_ingest(stack: Stack, rng: random.Random, target: str) -> None:
    sh("docker", "kill", "--signal", "KILL", target)
    time.sleep(1)
    sh("docker", "start", target)
    wait_until(lambda: healthy(stack.port), 120, "the ingest serving again", interval=0.2)


def restart_redis(stack: Stack, rng: random.Random, target: str) -> None:
    stack.compose("restart", "redis")


def partition_transcriber(stack: Stack, rng: random.Random, target: str) -> None:
    network = stack.network()
    sh("docker", "network", "disconnect", network, target)
    time.sleep(rng.uniform(3, 8))
    sh("docker", "network", "connect", "--alias", "transcriber", network, target)


def pause_transcriber(stack: Stack, rng: random.Random, target: str) -> None:
    """Paused past the claim timeout: another transcriber takes its segments."""
    sh("docker", "pause", target)
    time.sleep(CLAIM_IDLE_S + 3)
    sh("docker", "unpause", target)


FAULTS: dict[str, Callable[[Stack, random.Random, str], None]] = {
    "kill_transcriber": kill_transcriber,
    "kill_ingest": kill_ingest,
    "restart_redis": restart_redis,
    "partition_transcriber": partition_transcriber,
    "pause_transcriber": pause_transcriber,
}


def fault_target(stack: Stack, rng: random.Random, kind: str) -> str:
    if kind == "kill_ingest":
        (ingest,) = stack.containers("ingest")
        return ingest
    return rng.choice(stack.containers("transcriber")) if kind.endswith("_transcriber") else ""


def nemesis(stack: Stack, plan: Plan, faults: list[dict[str, Any]]) -> None:
    """Faults, each healed before the next, until ``plan.minutes`` are up and every kind was injected."""
    rng = random.Random(plan.seed)
    end = time.monotonic() + 60 * plan.minutes
    kinds: list[str] = []
    while time.monotonic() < end or set(KINDS) - {f["kind"] for f in faults}:
        time.sleep(rng.uniform(*plan.gap_s))
        if not kinds:  # every kind once per round, in a random order
            kinds = rng.sample(KINDS, len(KINDS))
        kind = kinds.pop()
        target = fault_target(stack, rng, kind)
        start = time.monotonic()
        FAULTS[kind](stack, rng, target)
        faults.append({"kind": kind, "target": target[:12], "start": start, "end": time.monotonic()})


# --- the checks -----------------------------------------------------------------------------------


def order_problem(session: Session) -> str | None:
    numbers = [f["segment"] for f in session.finals]
    if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return f"session {session.index}@{session.started:.0f}: finals {numbers} out of order, twice or holed"
    return None


def foreign_finals(session: Session) -> list[str]:
    """Finals closer to another session's sentences than to this session's own."""
    others = [t for t in SENTENCES if t not in session.texts]
    return [
        f["text"]
        for f in session.finals
        if min(wer(t, f["text"]) for t in others) < min(wer(t, f["text"]) for t in session.texts)
    ]


def outcome(session: Session, ingest_kills: list[tuple[float, float]]) -> str:
    """complete, clear_error, cut_or_unserved_by_ingest_kill, or unclear."""
    complete = len(session.finals) == len(session.texts) and not order_problem(session)
    if session.code == 0:
        return "complete" if complete else "unclear"
    if any(e.get("type") == "error" for e in session.events) or any(
        reason in session.stderr for reason in ("refused", "closed the connection")
    ):
        return "clear_error"
    cut = any(a <= session.ended and session.started <= b for a, b in ingest_kills)
    if cut and ("connection lost" in session.stderr or not session.events):
        return "cut_or_unserved_by_ingest_kill"  # cut off by the kill, or not let in until it was back
    return "unclear"


def check(sessions: list[Session], faults: list[dict[str, Any]]) -> dict[str, Any]:
    # From the kill until the ingest answered /healthz again (a little after, for clients in flight).
    ingest_kills = [(f["start"], f["end"] + 1) for f in faults if f["kind"] == "kill_ingest"]
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    segments = duplicated = lost = foreign = 0
    for s in sessions:
        numbers = [f["segment"] for f in s.finals]
        segments += len(numbers)
        duplicated += len(numbers) - len(set(numbers))
        if problem := order_problem(s):
            problems.append(problem)
        for text in foreign_finals(s):
            foreign += 1
            problems.append(f"session {s.index}: final {text!r} belongs to another session's speech")
        kind = outcome(s, ingest_kills)
        outcomes[kind] += 1
        if kind == "unclear":
            if s.code == 0:
                lost += max(0, len(s.texts) - len(set(numbers)))
            problems.append(
                f"session {s.index}: exit {s.code} with {len(s.finals)} finals for {len(s.texts)} "
                f"sentences: {s.stderr[-200:]!r}"
            )
    reasons = Counter(s.stderr.splitlines()[-1][:90] for s in sessions if s.code != 0 and s.stderr)
    return {
        "sessions": len(sessions),
        "outcomes": dict(outcomes),
        "segments_answered": segments,
        "duplicated": duplicated,
        "lost_in_complete_exits": lost,
        "unclear": outcomes["unclear"],
        "foreign_finals": foreign,
        "failed_session_reasons": dict(reasons),
        "problems": problems[:20],
    }


def leftovers(stack: Stack) -> dict[str, Any]:
    """What Redis still holds: every key and its type, streams' lengths and pending entries, and
    the result channels still subscribed."""
    found: dict[str, Any] = {"keys": {}, "pending": {}, "length": {}}
    for key in stack.redis_cli("--scan").split():
        kind = stack.redis_cli("type", key).strip()
        found["keys"][key] = kind
        if kind == "stream":
            found["length"][key] = int(stack.redis_cli("xlen", key))
            groups = stack.redis_cli("xinfo", "groups", key).split()
            if "pending" in groups:
                found["pending"][key] = int(groups[groups.index("pending") + 1])
    found["result_channels"] = stack.redis_cli("pubsub", "channels", keys.result_channel("*")).split()
    return found


def left_behind(found: dict[str, Any]) -> list[str]:
    """What of ``found`` should not be there once every session ended: empty when clean."""
    stray = [f"key {k}" for k in found["keys"] if not SERVICE_KEYS.match(k)]
    entries = [f"{n} entries in {k}" for k, n in found["length"].items() if n]
    pending = [f"{n} pending in {k}" for k, n in found["pending"].items() if n]
    channels = [f"result channel {c} still subscribed" for c in found["result_channels"]]
    return stray + entries + pending + channels


def settle(stack: Stack) -> dict[str, Any]:
    """Redis once nothing is pending any more (at most 60 s: what stays is reported), a little after."""
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: not any(leftovers(stack)["pending"].values()), 60, "no pending entries", interval=1
        )
    time.sleep(5)
    return leftovers(stack)


def failures(report: dict[str, Any]) -> list[str]:
    """Why a run's report is not clean: empty when it is."""
    counts = {
        "duplicated finals": report["duplicated"],
        "finals lost in sessions that ended normally": report["lost_in_complete_exits"],
        "unclear endings": report["unclear"],
        "finals in the wrong session": report["foreign_finals"],
    }
    found = [f"{n} {what}" for what, n in counts.items() if n]
    found += [f"left in Redis: {what}" for what in report["left_in_redis"]]
    found += [f"fault never injected: {kind}" for kind in KINDS if not report["faults"].get(kind)]
    problems: list[str] = report["problems"]
    return found + problems


# --- a run ----------------------------------------------------------------------------------------


def run(plan: Plan) -> dict[str, Any]:
    """One nemesis run against a stack of its own: its report (``failures`` says what is wrong)."""
    prepare_engine()
    workdir = Path(sh("mktemp", "-d").strip())
    audio = [session_audio(i, workdir) for i in range(plan.sessions)]
    started = time.monotonic()
    with stack_up(plan.project, plan.transcribers) as stack:
        healthy_s = time.monotonic() - started
        baseline = stack.memory()
        peak = dict(baseline)
        sessions: list[Session] = []
        faults: list[dict[str, Any]] = []
        stop = threading.Event()
        clients = [
            threading.Thread(target=client_loop, args=(stack, i, a, stop, sessions))
            for i, a in enumerate(audio)
        ]
        clients.append(threading.Thread(target=watch_memory, args=(stack, stop, peak)))
        for thread in clients:
            thread.start()
        try:
            nemesis(stack, plan, faults)
        finally:
            stop.set()  # the sessions in flight finish; no new one starts
            for thread in clients:
                thread.join()
        redis_after = settle(stack)
        report = {
            "plan": dataclasses.asdict(plan),
            "up_and_healthy_s": round(healthy_s, 1),
            "nemesis_s": round(faults[-1]["end"] - faults[0]["start"], 1) if faults else 0.0,
            "faults": dict(Counter(f["kind"] for f in faults)),
            **check(sessions, faults),
            "left_in_redis": left_behind(redis_after),
            "redis_after": redis_after,
            "memory_mib": memory_figures(baseline, peak, stack.memory()),
        }
    report["wall_s"] = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the nemesis runs (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="the faults' order, targets and timing")
    parser.add_argument("--transcribers", type=int, default=2, help="finals transcribers (default 2)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "nemesis.json", help="the JSON report"
    )
    args = parser.parse_args()
    plan = Plan(args.sessions, args.minutes, args.seed, args.transcribers)
    report = {"command": " ".join(sys.argv), **run(plan)}
    write_report(args.out, report)
    shown = {k: v for k, v in report.items() if k != "redis_after"}
    print(json.dumps(shown, indent=2))
    wrong = failures(report)
    print("clean" if not wrong else "NOT CLEAN:\n  " + "\n  ".join(wrong))
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
