"""Side by side in one run: our stack, the bare model, the seed's design, and the ingest alone.

    .venv/bin/python -m bench.compare [--sessions 1,4,16] [--seconds 60] [--out bench/results/compare.json]

Every client is a real WebSocket session streaming the five espeak-ng sentences, separated by
1.2 s of silence, in a loop at real-time pace in 20 ms frames; each session enters the loop at a
different point and sends at a different phase of the 20 ms tick. Our segmenter, run offline over
each session's audio, says which frame closes each segment, so every latency splits exactly:

    end of speech -> text = hangover + client lag + queue wait + model + pipeline overhead

- hangover: frame holding the utterance's last sample -> frame that closes its segment, both on
  the client's real-time schedule (the VAD's silence wait, by design);
- client lag: how late the load generator sent that closing frame;
- queue wait: ours, segment enqueued -> model start (the transcriber's timings, read off the
  result channels); the seed's, closing frame sent -> its blocked event loop getting to it;
- model: the model call that carried the segment;
- pipeline overhead: the rest (WebSocket, VAD, resampling, Redis streams, pub/sub, relay).

A segment answered by an eager guess (queued when its pause began, ``--eager-ms``) has no such
split: its model ran during the hangover. Its latency counts; its parts (but the hangover) do
not, and ``answered_by_eager_guesses`` says how many.

Throughput: seconds of speech (the utterances' own length) whose transcription finished in the
steady part of the streaming window, per wall second. The bare model does the same segments back
to back in this process. "Ingest alone" swaps the transcriber for ``bench.echo_worker`` (real
Redis round trips, no model), pins the ingest to core 0 and everything else to core 1, and ramps
the session count; its frame-handling lag is closing frame sent -> the ingest's ``endpoint_at``
stamp on that segment: how late the ingest handles frames.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis

from bench.common import Fleet, Session, fleet, save_report
from bench.measure import cpu_seconds, nearest_rank, spread
from bench.peers import SeedSession
from services import keys
from services.protocol import SegmentResult
from services.segmenter import Segment, Segmenter, SegmenterConfig
from services.stack import MODEL_DIR, POOL, ROOT, Proc, Stack, free_port, port_open, samples, wait_until
from tools.speech import Speech, Stream, wer

RATE, CHUNK_MS = 16000, 20
CHUNK = RATE * CHUNK_MS // 1000 * 2
STEP = CHUNK_MS / 1000
OFFSETS = 48  # distinct entry points into the loop; each one's segmentation is computed once
TAIL_S = 1.0  # an utterance is measured only if it ends this long before its session's audio
LAG_LIMIT_S = 0.050
TARGETS = {"overhead_p50_s": 0.005, "overhead_p99_s": 0.025, "ingest_sessions": 300.0,
           "vs_bare": 0.95, "vs_seed_16": 3.0}  # fmt: skip
HISTOGRAMS = ("stt_vad_hangover_seconds", "stt_queue_wait_seconds", "stt_segment_model_seconds",
              "stt_relay_seconds", "stt_e2e_latency_seconds")  # fmt: skip
Span = tuple[float, float]


# --- what each session sends, and where our segmenter cuts it ---------------------------------------


@dataclass(frozen=True)
class Cut:
    """A segment: where it lies in the session's audio, the frame that closes it, its utterance."""

    chunk: int
    start: float
    end: float
    utterance: int  # index into Plan.utterances; -1: none of them


@dataclass(frozen=True)
class Plan:
    pcm: bytes = field(repr=False)
    utterances: tuple[Span, ...]  # those whose latency is measured
    texts: tuple[str, ...]
    speech: tuple[Span, ...]  # every stretch of speech in the audio, whole or not
    cuts: tuple[Cut, ...]


def overlap(a: Span, b: Span) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def utterance_of(span: Span, utterances: Sequence[Span]) -> int:
    scores = [overlap(span, u) for u in utterances]
    i = int(np.argmax(scores)) if scores else -1
    return i if i >= 0 and scores[i] > 0 else -1


def cut(pcm: bytes, utterances: Sequence[Span]) -> tuple[Cut, ...]:
    """What the ingest's segmenter (default settings) makes of ``pcm`` fed in the client's frames."""
    segmenter, cuts = Segmenter(RATE, SegmenterConfig()), []
    for n in range(len(pcm) // CHUNK):
        for event in segmenter.feed(pcm[n * CHUNK : (n + 1) * CHUNK]):
            if isinstance(event, Segment):
                cuts.append(
                    Cut(n, event.start, event.end, utterance_of((event.start, event.end), utterances))
                )
    return tuple(cuts)


def make_plans(
    stream: Stream, sessions: int, seconds: float, cache: dict[tuple[int, int], Plan]
) -> list[Plan]:
    """``sessions`` plans of ``seconds`` of the looped stream, entered at points spread over its period."""
    period, frames = len(stream.pcm) // CHUNK, int(seconds / STEP)
    looped = stream.pcm * (frames // period + 2)
    out = []
    for i in range(sessions):
        slot = i * OFFSETS // sessions
        if (slot, frames) not in cache:
            skip = slot * period // OFFSETS
            shifted = [((s - skip * STEP) + r * period * STEP, (e - skip * STEP) + r * period * STEP, text)
                       for r in range(frames // period + 2)
                       for (s, e), text in zip(stream.utterances, stream.texts, strict=True)]  # fmt: skip
            speech = tuple((max(0.0, s), min(seconds, e)) for s, e, _ in shifted if e > 0 and s < seconds)
            keep = [(s, e, t) for s, e, t in shifted if s >= 0 and e + TAIL_S <= seconds]
            pcm = looped[skip * CHUNK : (skip + frames) * CHUNK]
            utterances = tuple((s, e) for s, e, _ in keep)
            texts = tuple(t for _, _, t in keep)
            cache[slot, frames] = Plan(pcm, utterances, texts, speech, cut(pcm, utterances))
        out.append(cache[slot, frames])
    return out


# --- the load generator -------------------------------------------------------------------------------


async def drive(
    uri: str, todo: list[Plan], seed: bool, grace: float, probe: Probe | None, groups: int
) -> Fleet:
    """One session per plan, all at once (``bench.common.fleet``); ``probe`` marks the steady window."""
    sessions = [
        SeedSession(uri, plan.pcm, RATE, CHUNK_MS, expected=len(plan.cuts))
        if seed
        else Session(uri, plan.pcm, RATE, CHUNK_MS)
        for plan in todo
    ]
    seconds = max(len(plan.pcm) for plan in todo) / CHUNK * STEP

    async def mark(t0: float) -> None:
        if probe is not None:
            await probe.at(*(t0 + x for x in window(seconds)))

    return await fleet(sessions, groups, grace, mark)


def window(seconds: float) -> Span:
    """The steady part of a run (offsets from its start): once the first segments are queued."""
    return min(10.0, seconds / 4), seconds


# --- the servers' side: timings, /metrics, CPU ------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    endpoint_at: float  # the server processed the closing frame
    waits_from: float  # ours: enqueued; the seed: its closing frame was sent
    model_start: float
    model_end: float
    eager: bool = False  # ours: an eager guess, queued before the closing frame (no split of its parts)


async def snoop(redis_url: str, into: dict[tuple[str, int], Timing]) -> None:
    """Every final result's timings, read off the result channels beside the ingest."""
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(keys.result_channel("*"))
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message and message["type"] == "pmessage":
                result = SegmentResult.from_json(message["data"])
                t = result.timings
                if not result.partial and "model_end" in t:
                    into[result.session, result.segment] = Timing(
                        t["endpoint_at"],
                        t["enqueued_at"],
                        t["model_start"],
                        t["model_end"],
                        bool(result.eager),
                    )
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


def scrape(port: int) -> dict[str, float]:
    """Each metric's samples summed over their labels (histogram buckets left out)."""
    out: dict[str, float] = {}
    for sample in samples(port):
        if "le" not in sample.labels:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def busy_seconds() -> float:
    """CPU time the whole machine has been busy (all cores, every process: ours and others')."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Probe:
    """CPU time of processes and /metrics of ports, at the start and end of the steady window."""

    def __init__(self, pids: dict[str, int], ports: dict[str, int]) -> None:
        self.pids, self.ports = pids, ports
        self.marks: list[tuple[float, dict[str, float], dict[str, dict[str, float]]]] = []

    def mark(self) -> None:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        cpu["all processes"] = busy_seconds()
        self.marks.append((time.time(), cpu, {name: scrape(port) for name, port in self.ports.items()}))

    async def at(self, *when: float) -> None:
        for t in when:
            await asyncio.sleep(max(0.0, t - time.time()))
            await asyncio.to_thread(self.mark)

    def cores(self) -> dict[str, float]:
        """Cores each process used in the window, and what other processes on the machine used."""
        (t1, a, _), (t2, b, _) = self.marks[:2]
        out = {name: round((b[name] - a[name]) / (t2 - t1), 3) for name in a}
        # Counted in whole clock ticks: a quiet machine can come out a tick or two below zero.
        out["others"] = round(max(0.0, out.pop("all processes") - sum(out.values())), 3)
        return out

    def delta(self, port: str, metric: str) -> float:
        return self.marks[1][2][port].get(metric, 0.0) - self.marks[0][2][port].get(metric, 0.0)

    def summary(self) -> dict[str, Any]:
        if len(self.marks) < 2:
            return {}
        span = self.marks[1][0] - self.marks[0][0]
        out: dict[str, Any] = {"cpu_cores": self.cores()}
        done = [self.delta(p, "stt_audio_processed_seconds_total") for p in self.ports if p != "ingest"]
        if done:
            out["audio_processed_per_s"] = round(sum(done) / span, 3)
        if "ingest" in self.ports:
            for name in HISTOGRAMS:
                count = self.delta("ingest", f"{name}_count")
                out[f"{name}_mean"] = round(self.delta("ingest", f"{name}_sum") / count, 4) if count else None
        return out


# --- analysis ------------------------------------------------------------------------------------------

Answer = tuple[Cut, float | None, Timing | None, str]  # a segment, its reply's arrival, timings, text
Record = dict[str, Any]  # one line of the seed server's timing log


def censored(values: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Percentiles of latencies where some are lower bounds (no answer before the session ended):
    ``pXX_at_least`` says the true value may be higher."""
    ordered = sorted(values)
    out: dict[str, Any] = {}
    for q in (50, 95, 99):
        i = nearest_rank(len(ordered), q)
        out[f"p{q}"] = round(ordered[i][0], 3) if ordered else None
        out[f"p{q}_at_least"] = any(c for _, c in ordered[: i + 1])
    return out


def answers_ours(session: Session, plan: Plan, found: dict[tuple[str, int], Timing]) -> list[Answer]:
    name = next((r.event["session"] for r in session.events if r.event.get("type") == "ready"), "")
    finals = {r.event["segment"]: (r.at, r.event["text"]) for r in session.finals}
    out: list[Answer] = []
    for number, c in enumerate(plan.cuts):
        arrival, text = finals.get(number, (None, ""))
        out.append((c, arrival, found.get((name, number)), text))
    return out


def answers_seed(
    session: Session, plan: Plan, records: dict[tuple[int, int], dict[str, Any]]
) -> list[Answer]:
    out: list[Answer] = []
    for number, received in enumerate(session.finals):
        r = records.get((session.port, number))
        chunk = -1 if r is None else r["message"] - 1  # the frame whose arrival closed the segment
        if r is None or chunk >= len(session.sent):
            continue
        c = Cut(chunk, r["start"], r["end"], utterance_of((r["start"], r["end"]), plan.utterances))
        timing = Timing(r["endpoint_at"], session.sent[chunk], r["model_start"], r["model_end"])
        out.append((c, received.at, timing, str(received.event.get("text", ""))))
    return out


def analyse(run: Fleet, plans: list[Plan], answers: list[list[Answer]], seconds: float) -> dict[str, Any]:
    e2e: list[tuple[float, bool]] = []
    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "hangover",
            "client_lag",
            "queue_wait",
            "model",
            "overhead",
            "overhead_with_queue",
            "frame_lag",
        )
    }
    lo, hi = window(seconds)
    done_speech = done_audio = offered = 0.0
    eager = 0
    refs, hyps = [], []
    for session, plan, mine in zip(run.sessions, plans, answers, strict=True):
        offered += sum(overlap(s, (0.0, seconds)) for s in plan.speech)
        last: dict[int, Answer] = {}
        for answer in mine:
            segment, _, done, _ = answer
            if done is not None and run.t0 + lo <= done.model_end <= run.t0 + hi:
                done_speech += sum(overlap((segment.start, segment.end), s) for s in plan.speech)
                done_audio += segment.end - segment.start
            if segment.utterance >= 0:
                last[segment.utterance] = answer
        for u, (_, end) in enumerate(plan.utterances):
            due_end = session.due(session.frame_of(end))
            c, arrival, timing, text = last.get(u, (None, None, None, ""))
            if c is None or arrival is None or timing is None or c.chunk >= len(session.sent):
                e2e.append((run.closed - due_end, True))
                continue
            e2e.append((arrival - due_end, False))
            refs.append(plan.texts[u])
            hyps.append(text)
            parts["hangover"].append(session.due(c.chunk) - due_end)
            if timing.eager:
                # Queued at the pause's start and answered as its final: its model time overlaps
                # the hangover, so the closing frame does not split it into parts.
                eager += 1
                continue
            sent = session.sent[c.chunk]
            queue, model = timing.model_start - timing.waits_from, timing.model_end - timing.model_start
            parts["client_lag"].append(sent - session.due(c.chunk))
            parts["queue_wait"].append(queue)
            parts["model"].append(model)
            parts["overhead"].append(arrival - sent - queue - model)
            parts["overhead_with_queue"].append(arrival - sent - model)
            parts["frame_lag"].append(timing.endpoint_at - sent)
    failures = [s.error for s in run.sessions if s.error]
    return {
        "utterances": len(e2e),
        "answered": sum(not c for _, c in e2e),
        "answered_by_eager_guesses": eager,  # not in the parts below but the hangover
        "failed_sessions": len(failures),
        "sessions_given_up": sum(run.gave_up),
        "failures": sorted(set(failures))[:3],
        "e2e_s": censored(e2e),
        "parts_s": {k: spread(v) for k, v in parts.items()},
        "offered_speech_per_s": round(offered / seconds, 3),
        "throughput_speech_per_s": round(done_speech / (hi - lo), 3),
        "throughput_audio_per_s": round(done_audio / (hi - lo), 3),
        "wer": round(wer(" ".join(refs), " ".join(hyps)), 3) if refs else None,
    }


# --- the four measurements -----------------------------------------------------------------------------


def drained(redis_url: str, name: str) -> bool:
    with redis.Redis.from_url(redis_url) as client:
        pending: Any = client.xpending(keys.segment_stream(name), keys.GROUP)
        return int(client.xlen(keys.segment_stream(name))) == 0 and int(pending["pending"]) == 0


async def run_ours(
    stack: Stack, todo: list[Plan], grace: float, probe: Probe, seconds: float, groups: int
) -> dict[str, Any]:
    found: dict[tuple[str, int], Timing] = {}
    listener = asyncio.create_task(snoop(stack.redis_url, found))
    await asyncio.sleep(0.5)  # subscribed
    run = await drive(stack.uri, todo, False, grace, probe, groups)
    await asyncio.sleep(0.5)
    listener.cancel()
    await asyncio.wait({listener})
    answers = [answers_ours(s, plan, found) for s, plan in zip(run.sessions, todo, strict=True)]
    result = analyse(run, todo, answers, seconds)
    return result | {"metrics": probe.summary()}


def start_stack(
    workdir: Path,
    module: str,
    model_id: str,
    flags: Sequence[str],
    count: int,
    ingest_flags: Sequence[str],
    env: dict[str, str] | None = None,
) -> tuple[Stack, dict[str, int]]:
    """redis-server, one ingest and ``count`` transcribers (``module`` with ``flags``), with /metrics."""
    ports = {"ingest": free_port()}
    stack = Stack.base(
        workdir, transcribers=0, ingest_flags=("--metrics-port", str(ports["ingest"]), *ingest_flags)
    )
    try:
        for i in range(count):
            ports[f"transcriber-{i + 1}"] = port = free_port()
            stack.start_transcriber(model_id, *flags, module=module, env=env, metrics_port=port)
        wait_until(lambda: all(port_open(p) for p in ports.values()), 180, "the transcribers to start")
        stack.wait_serving(POOL, count, timeout=30)
    except BaseException:
        stack.stop()
        raise
    return stack, ports


def pids_of(stack: Stack) -> dict[str, int]:
    pids = {"ingest": stack.ingest.popen.pid, "redis": stack.redis.popen.pid, "clients": os.getpid()}
    return pids | {f"transcriber-{i + 1}": p.popen.pid for i, p in enumerate(stack.transcribers)}


def ours(workdir: Path, stream: Stream, args: argparse.Namespace, cache: dict[Any, Plan]) -> dict[str, Any]:
    flags = ["--device", "cpu", "--max-batch", str(args.max_batch), *args.transcriber_arg]
    stack, ports = start_stack(workdir, "services.transcriber", args.model_id, flags, args.transcribers, ())
    out = {}
    try:
        for n in args.session_counts:
            probe = Probe(pids_of(stack), ports)
            todo = make_plans(stream, n, args.seconds, cache)
            out[str(n)] = result = asyncio.run(run_ours(stack, todo, args.grace, probe, args.seconds, n))
            print(line("ours", n, result), flush=True)
            wait_until(lambda: drained(stack.redis_url, POOL), 300, "the transcribers to drain")
    finally:
        stack.stop()
    return out


def seed(workdir: Path, stream: Stream, args: argparse.Namespace, cache: dict[Any, Plan]) -> dict[str, Any]:
    out = {}
    for n in args.session_counts:
        port, log = free_port(), workdir / f"seed-{n}.jsonl"
        command = [sys.executable, "-m", "bench.seed_server", "--model-id", args.model_id]
        command += ["--port", str(port)]
        proc = Proc("seed", [*command, "--timings", str(log)], workdir / f"seed-{n}.log")
        try:
            wait_until(lambda: port_open(port) or proc.popen.poll() is not None, 180, "the seed server")  # noqa: B023
            if proc.popen.poll() is not None:
                raise RuntimeError(f"the seed server exited: {proc.log[-2000:]}")
            probe = Probe({"seed": proc.popen.pid, "clients": os.getpid()}, {})
            todo = make_plans(stream, n, args.seconds, cache)
            run = asyncio.run(drive(f"ws://127.0.0.1:{port}", todo, True, args.grace, probe, n))
        finally:
            proc.stop()
        records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        by_key = {(r["port"], r["segment"]): r for r in records}
        answers = [answers_seed(s, plan, by_key) for s, plan in zip(run.sessions, todo, strict=True)]
        result = analyse(run, todo, answers, args.seconds)
        out[str(n)] = result = result | {"metrics": probe.summary()}
        print(line("seed", n, result), flush=True)
    return out


def bare(stream: Stream, args: argparse.Namespace) -> dict[str, Any]:
    """Our segments of one pass of the stream through WhisperModel, back to back, in this process."""
    import torch

    from services.audio import pcm16_to_float
    from services.transcriber.interface import Decoding, warm_up
    from services.transcriber.model import WhisperModel

    model = WhisperModel.load(args.model_id, "cpu", torch.float32, Decoding())
    warm_up(model)
    cuts = [c for c in cut(stream.pcm, stream.utterances) if c.utterance >= 0]
    clips = [pcm16_to_float(stream.pcm[round(c.start * RATE) * 2 : round(c.end * RATE) * 2]) for c in cuts]
    speech = sum(overlap((c.start, c.end), stream.utterances[c.utterance]) for c in cuts)
    audio = sum(len(clip) / RATE for clip in clips)
    out: dict[str, Any] = {"segments": len(clips), "repeats": args.bare_repeats}
    for batch in sorted({args.max_batch, *(int(x) for x in args.bare_batches.split(","))}):
        probe = Probe({"bare": os.getpid()}, {})
        probe.mark()
        started, texts = time.perf_counter(), []
        for _ in range(args.bare_repeats):
            for i in range(0, len(clips), batch):
                texts += [t.text for t in model.transcribe(clips[i : i + batch])]
        took = time.perf_counter() - started
        probe.mark()
        out[f"batch_{batch}"] = {
            "seconds": round(took, 2),
            "cpu_cores": probe.cores(),
            "throughput_speech_per_s": round(speech * args.bare_repeats / took, 3),
            "throughput_audio_per_s": round(audio * args.bare_repeats / took, 3),
            "wer": round(
                wer(" ".join(stream.texts[c.utterance] for c in cuts), " ".join(texts[: len(cuts)])), 3
            ),
        }
        print(f"bare model, batch {batch}: {out[f'batch_{batch}']}", flush=True)
    return out


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def ingest_alone(
    workdir: Path, stream: Stream, args: argparse.Namespace, cache: dict[Any, Plan]
) -> dict[str, Any]:
    worker = ["--serve-as", POOL, "--max-batch", "64", "--batch-wait-ms", "0", "--log-level", "WARNING"]
    flags = ("--max-sessions", "5000", *args.ingest_arg)
    env = {"ECHO_MODEL_TIME": args.echo_model_time}
    stack, ports = start_stack(workdir, "bench.echo_worker", "echo", worker, 1, flags, env)
    everything = os.sched_getaffinity(0)
    pinned = (os.cpu_count() or 1) >= 2
    steps: dict[str, Any] = {}
    out: dict[str, Any] = {"pinned": pinned, "steps": steps}
    try:
        if pinned:
            pin(stack.ingest.popen.pid, {0})
            for pid in (stack.redis.popen.pid, stack.transcribers[0].popen.pid, os.getpid()):
                pin(pid, {1})
        for n in args.ramp_counts:
            probe = Probe(pids_of(stack), {"ingest": ports["ingest"]})
            todo = make_plans(stream, n, args.ramp_seconds, cache)
            result = asyncio.run(run_ours(stack, todo, 30.0, probe, args.ramp_seconds, args.sender_groups))
            cores = result["metrics"].get("cpu_cores", {}).get("ingest")
            result["ingest_cpu_per_session_pct"] = round(100 * cores / n, 3) if cores is not None else None
            lag = result["parts_s"]["frame_lag"]["p99"]
            result["carried"] = bool(
                lag is not None and lag < LAG_LIMIT_S and result["answered"] == result["utterances"]
            )
            steps[str(n)] = result
            print(line("ingest+echo", n, result), flush=True)
            if not result["carried"]:
                break
            wait_until(lambda: drained(stack.redis_url, POOL), 60, "the echo worker to drain")
    finally:
        if pinned:
            os.sched_setaffinity(0, everything)
        stack.stop()
    carried = [int(n) for n, r in steps.items() if r["carried"]]
    out["max_sessions_lag_p99_under_50ms"] = max(carried, default=0)
    return out


# --- report -------------------------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f}"


def e2e_text(r: dict[str, Any], q: int) -> str:
    value = r["e2e_s"][f"p{q}"]
    return "-" if value is None else (">=" if r["e2e_s"][f"p{q}_at_least"] else "") + f"{value:.2f}"


def line(design: str, n: int, r: dict[str, Any]) -> str:
    p = r["parts_s"]
    return (
        f"{design:<12}{n:>5}  e2e p50/p95/p99 {e2e_text(r, 50)}/{e2e_text(r, 95)}/{e2e_text(r, 99)} s  "
        f"hangover {p['hangover']['p50'] or 0:.2f}  queue p50 {p['queue_wait']['p50'] or 0:.2f}  "
        f"model p50 {p['model']['p50'] or 0:.2f}  overhead p50/p99 {ms(p['overhead']['p50'])}/"
        f"{ms(p['overhead']['p99'])} ms  frame lag p99 {ms(p['frame_lag']['p99'])} ms  "
        f"speech/s {r['throughput_speech_per_s']:.2f} of {r['offered_speech_per_s']:.2f}  "
        f"answered {r['answered']}/{r['utterances']}  failed sessions {r['failed_sessions']}"
    )


def verdicts(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ours_, seed_, bare_ = report.get("ours", {}), report.get("seed", {}), report.get("bare", {})
    if ours_:
        hangover = [
            r["parts_s"]["hangover"]["mean"] for r in ours_.values() if r["parts_s"]["hangover"]["mean"]
        ]
        limit = 1.0 + (float(np.mean(hangover)) if hangover else 0.5)
        ok = [n for n in args.session_counts if (r := ours_[str(n)])["e2e_s"]["p95"] is not None
              and not r["e2e_s"]["p95_at_least"] and r["e2e_s"]["p95"] < limit]  # fmt: skip
        within = [n for n in args.session_counts if all(m in ok for m in args.session_counts if m <= n)]
        out["realtime_sessions_p95_under_1s_plus_hangover"] = {
            "limit_s": round(limit, 3),
            "sessions": max(within, default=0),
        }
    top = str(max(args.session_counts))
    if ours_ and bare_:
        ceiling = max(v["throughput_speech_per_s"] for k, v in bare_.items() if k.startswith("batch_"))
        ratio = ours_[top]["throughput_speech_per_s"] / ceiling
        target = TARGETS["vs_bare"]
        out["throughput_vs_bare"] = {"sessions": int(top), "ratio": round(ratio, 3), "met": ratio >= target}
    if ours_ and seed_:
        ratios = {}
        for n in seed_:
            if n in ours_:
                a, b = ours_[n], seed_[n]
                ratios[n] = {
                    "throughput": round(
                        a["throughput_speech_per_s"] / max(b["throughput_speech_per_s"], 1e-9), 3
                    ),
                    "latency_p50": round(a["e2e_s"]["p50"] / b["e2e_s"]["p50"], 3)
                    if b["e2e_s"]["p50"]
                    else None,
                    "latency_p95": round(a["e2e_s"]["p95"] / b["e2e_s"]["p95"], 3)
                    if b["e2e_s"]["p95"]
                    else None,
                    "latencies_are_lower_bounds": a["e2e_s"]["p95_at_least"] or b["e2e_s"]["p95_at_least"],
                }
        out["ours_vs_seed"] = ratios
        if "16" in ratios:
            r16 = ratios["16"]["throughput"]
            out["throughput_vs_seed_16"] = {
                "ratio": r16,
                "target": TARGETS["vs_seed_16"],
                "met": r16 >= TARGETS["vs_seed_16"],
            }
    steps = report.get("ingest", {}).get("steps", {})
    if steps:
        first = steps[min(steps, key=int)]
        p50, p99 = first["parts_s"]["overhead"]["p50"], first["parts_s"]["overhead"]["p99"]
        out[f"overhead_at_{min(steps, key=int)}_sessions"] = {
            "p50_s": p50, "p99_s": p99, "met": p50 is not None and p99 is not None
            and p50 <= TARGETS["overhead_p50_s"] and p99 <= TARGETS["overhead_p99_s"]}  # fmt: skip
        carried = report["ingest"]["max_sessions_lag_p99_under_50ms"]
        out["ingest_sessions"] = {"carried": carried, "target": TARGETS["ingest_sessions"],
                                  "met": carried >= TARGETS["ingest_sessions"]}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,4,16", help="session counts for ours and the seed design")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio each session streams")
    parser.add_argument(
        "--grace", type=float, default=20.0, help="wait this long after the audio for answers"
    )
    parser.add_argument("--transcribers", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8, help="our transcribers' --max-batch")
    parser.add_argument(
        "--transcriber-arg", action="append", default=[], help="more flags for our transcribers"
    )
    parser.add_argument("--model-id", default=str(MODEL_DIR))
    parser.add_argument("--bare-repeats", type=int, default=2)
    parser.add_argument("--bare-batches", default="1,4", help="batch sizes for the bare model")
    parser.add_argument("--ramp", default="50,200,300,400,500,600", help="session counts, ingest alone")
    parser.add_argument("--ramp-seconds", type=float, default=30.0)
    parser.add_argument("--sender-groups", type=int, default=10, help="load generator tasks in the ramp")
    parser.add_argument("--parts", default="bare,ours,seed,ingest")
    parser.add_argument(
        "--echo-model-time",
        default="0,0",
        help="ingest alone: the echo worker takes A + B * batch seconds a batch ('A,B'; a GPU stood in for)",
    )
    parser.add_argument("--ingest-arg", action="append", default=[], help="more flags for the ingest")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    args = parser.parse_args()
    args.session_counts = [int(x) for x in args.sessions.split(",")]
    args.ramp_counts = [int(x) for x in args.ramp.split(",")]
    parts = set(args.parts.split(","))
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([".venv/bin/python -m bench.compare", *sys.argv[1:]]),
        "machine": machine(),
        "model": args.model_id,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "session_counts", "ramp_counts")
        },
        "load_average_start": os.getloadavg(),
    }
    started = time.time()
    cache: dict[Any, Plan] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stream = Speech(workdir).stream(RATE)
        if "bare" in parts:
            report["bare"] = bare(stream, args)
        for name, measure in (("ours", ours), ("seed", seed), ("ingest", ingest_alone)):
            if name in parts:
                report[name] = measure(workdir, stream, args, cache)
    report["load_average_end"] = os.getloadavg()
    report["wall_s"] = round(time.time() - started)
    report["verdicts"] = verdicts(report, args)
    print(table(report))
    save_report(args.out, report)
    return 0


def machine() -> dict[str, Any]:
    model = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                  if x.startswith("model name")), "?")  # fmt: skip
    return {"cpus": os.cpu_count(), "cpu": model}


def f2(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def others(metrics: dict[str, Any]) -> str:
    """Cores other processes on the machine used meanwhile: the noise in a row."""
    return f2(metrics.get("cpu_cores", {}).get("others"))


def table(report: dict[str, Any]) -> str:
    head = ["design", "sess", "e2e p50", "p95", "p99", "hang", "queue", "model", "ovh p50", "ovh p99"]
    head += ["speech/s", "offered", "answered", "others"]
    rows = ["  ".join(f"{h:>8}" for h in head)]
    for design in ("ours", "seed"):
        for n, r in report.get(design, {}).items():
            p = r["parts_s"]
            cells = [design, n, e2e_text(r, 50), e2e_text(r, 95), e2e_text(r, 99)]
            cells += [f2(p[k]["p50"]) for k in ("hangover", "queue_wait", "model")]
            cells += [ms(p["overhead"]["p50"]), ms(p["overhead"]["p99"])]
            cells += [f2(r["throughput_speech_per_s"]), f2(r["offered_speech_per_s"])]
            cells += [f"{r['answered']}/{r['utterances']}", others(r.get("metrics", {}))]
            rows.append("  ".join(f"{c:>8}" for c in cells))
    for k, v in report.get("bare", {}).items():
        if k.startswith("batch_"):
            cells = ["bare", k.replace("batch_", "batch "), *[""] * 8, f2(v["throughput_speech_per_s"])]
            cells += ["", "", others(v)]
            rows.append("  ".join(f"{c:>8}" for c in cells))
    steps = report.get("ingest", {}).get("steps", {})
    if steps:
        head = ["ingest", "sess", "lag p50", "lag p99", "ovh p50", "ovh p99", "ovh+q p99", "cl.lag99"]
        head += ["cores", "%cpu/ses", "others"]
        rows += ["", "  ".join(f"{h:>8}" for h in [*head, "carried"])]
        for n, r in steps.items():
            p = r["parts_s"]
            cells = ["+echo", n, ms(p["frame_lag"]["p50"]), ms(p["frame_lag"]["p99"])]
            cells += [ms(p["overhead"]["p50"]), ms(p["overhead"]["p99"]), ms(p["overhead_with_queue"]["p99"])]
            cells += [ms(p["client_lag"]["p99"])]
            cells += [
                f2(r["metrics"].get("cpu_cores", {}).get("ingest")),
                f2(r["ingest_cpu_per_session_pct"]),
                others(r["metrics"]),
            ]
            rows.append("  ".join(f"{c:>8}" for c in [*cells, str(r["carried"])]))
    rows.append("")
    rows += [f"{name}: {json.dumps(v)}" for name, v in report.get("verdicts", {}).items()]
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
