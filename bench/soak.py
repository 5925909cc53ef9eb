"""Soak: N long real-time sessions for M minutes against the whole stack; losses, duplicates and drift.

Starts a real redis-server, T whisper-base transcribers and one ingest, then N concurrent WebSocket
sessions. Each is one session that streams the five espeak-ng sentences, separated by silence,
back to back at real-time pace (20 ms frames on the wall clock) for M minutes, so where every
utterance ends in its stream is known; each session starts at a different sentence, so their
ends of speech do not all fall together. At the end each sends end of audio and waits for done.

Each final is matched to the utterance its start/end overlaps most. Reported: utterances sent and
finals received, lost (an utterance with no final), duplicated (an utterance with two finals, or a
segment number received twice), error events by code, and per minute of the run the p50/p99 end of
speech -> final latency (arrival minus the moment the utterance's last sample was sent) and the
largest VmRSS of redis-server, the ingest and each transcriber (sampled every few seconds).

    .venv/bin/python -m bench.soak --sessions N --minutes M [--transcribers T] [--out bench/results/soak.json]

Exit status 0 when the verdict passes, 1 when it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import Session, match_finals, save_report
from bench.measure import spread
from services.stack import POOL, ROOT, Proc, Stack
from tools.speech import Speech, Stream

LATENCY_DRIFT = 1.5  # last full minute's p50 may be at most this times the first's
RSS_GROWTH = 0.10  # the last full minute's RSS may be at most this much above minute 2's
LOG_PROBLEM = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) |^Traceback")


@dataclass(frozen=True)
class Script:
    """One session's audio and where its utterances lie in it (seconds)."""

    pcm: memoryview
    offset_s: float  # where in the five-sentence stream this session starts
    utterances: tuple[tuple[float, float], ...]


def scripts(stream: Stream, minutes: float, sessions: int) -> list[Script]:
    """The stream looped for at least ``minutes``, entered at a different pause for each session."""
    period = len(stream.pcm) / 2 / stream.rate
    reps = max(1, math.ceil(minutes * 60 / period))
    looped = memoryview(stream.pcm * (reps + 1))
    pairs = zip(stream.utterances, stream.utterances[1:], strict=False)
    pauses = [0.0] + [(end + start) / 2 for (_, end), (start, _) in pairs]
    out = []
    for i in range(sessions):
        want = i * period / sessions
        skip = round(min(pauses, key=lambda p: abs(p - want)) * stream.rate) * 2
        offset = skip / 2 / stream.rate
        utterances = [
            (r * period + start - offset, r * period + end - offset)
            for r in range(reps + 1)
            for start, end in stream.utterances
        ]
        keep = tuple(u for u in utterances if u[0] >= 0 and u[1] <= reps * period)
        out.append(Script(looped[skip : skip + reps * len(stream.pcm)], round(offset, 3), keep))
    return out


def rss_mib(pid: int) -> float | None:
    """VmRSS of a live process in MiB; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(found.group(1)) / 1024, 1) if found else None


async def sample_rss(
    pids: dict[str, int],
    t0: float,
    every: float,
    into: list[dict[str, Any]],
    stop: asyncio.Event,
    progress: Callable[[dict[str, Any]], None],
) -> None:
    """Append {t, name: MiB, ...} every ``every`` s until ``stop``; call ``progress`` once a minute."""
    reported = 0
    while True:
        sample: dict[str, Any] = {"t": round(time.time() - t0, 1)}
        sample.update({name: rss_mib(pid) for name, pid in pids.items()})
        into.append(sample)
        if sample["t"] >= 60 * (reported + 1):
            reported += 1
            progress(sample)
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def soak(stack: Stack, plans: list[Script], rate: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run every session at once while sampling RSS; return the raw record of what happened."""
    procs = {"redis": stack.redis, "ingest": stack.ingest}
    procs.update({f"transcriber-{i + 1}": p for i, p in enumerate(stack.transcribers)})
    pids = {name: proc.popen.pid for name, proc in procs.items()}
    sessions = [Session(stack.uri, plan.pcm, rate, args.chunk_ms) for plan in plans]
    failures: list[str | None] = [None] * len(sessions)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    t0 = time.time()  # the clock bench.common stamps frames and events with

    def progress(sample: dict[str, Any]) -> None:
        finals = sum(len(s.finals) for s in sessions)
        errors = sum(len(s.errors) for s in sessions)
        rss = ", ".join(f"{name} {sample[name]}" for name in pids)
        print(f"  {sample['t']:6.0f} s: {finals} finals, {errors} errors; RSS MiB {rss}", flush=True)

    async def one(i: int) -> None:
        try:
            await sessions[i].run(done_timeout=args.done_timeout)
        except Exception as exc:  # one session's failure is a result; the others go on
            failures[i] = f"{type(exc).__name__}: {exc}"

    async with asyncio.TaskGroup() as group:
        group.create_task(sample_rss(pids, t0, args.rss_every, samples, stop, progress))
        try:
            await asyncio.gather(*(one(i) for i in range(len(sessions))))
        finally:
            stop.set()
    alive = {name: proc.popen.poll() is None for name, proc in procs.items()}
    return {"t0": t0, "sessions": sessions, "failures": failures, "samples": samples, "alive": alive}


def seconds(stats: dict[str, float | None]) -> dict[str, float | None]:
    return {f"{name}_s": value for name, value in stats.items()}


def analyse(plans: list[Script], run: dict[str, Any], chunk_ms: int) -> dict[str, Any]:
    t0: float = run["t0"]
    arrivals: list[float] = []  # every final's arrival (s into the run)
    timed: list[tuple[float, float, float]] = []  # (end of speech, arrival, latency), s into the run
    details, errors = [], Counter[str]()
    totals = Counter[str]()
    for plan, session, failure in zip(plans, run["sessions"], run["failures"], strict=True):
        session_errors = Counter(r.event.get("code", "?") for r in session.errors)
        errors.update(session_errors)
        audio_sent = len(session.sent) * chunk_ms / 1000
        sent = [u for u in plan.utterances if u[1] <= audio_sent]
        mine, unmatched = match_finals(session.finals, sent)
        segments = Counter(r.event["segment"] for r in session.events if "segment" in r.event)
        lost = [u for u, got in zip(sent, mine, strict=True) if not got]
        doubled = [u for u, got in zip(sent, mine, strict=True) if len(got) > 1]
        repeated = sorted(seg for seg, n in segments.items() if n > 1)
        for (_, end), got in zip(sent, mine, strict=True):
            if got:
                eos = session.sent_at(end)
                timed.append((eos - t0, got[-1].at - t0, got[-1].at - eos))
        arrivals += [r.at - t0 for r in session.finals]
        totals.update(
            utterances_sent=len(sent),
            finals=len(session.finals),
            lost=len(lost),
            duplicated=len(doubled) + len(repeated),
            unmatched_finals=len(unmatched),
            errors=len(session.errors),
        )
        details.append(
            {
                "offset_s": plan.offset_s,
                "audio_sent_s": round(audio_sent, 1),
                "done": session.done,
                "failure": failure,
                "client_lag_max_s": round(session.lag(), 3),
                "utterances_sent": len(sent),
                "finals": len(session.finals),
                "lost": [[round(s, 2), round(e, 2)] for s, e in lost],
                "utterances_with_two_finals": [[round(s, 2), round(e, 2)] for s, e in doubled],
                "segments_received_twice": repeated,
                "unmatched_finals": [r.event for r in unmatched],
                "errors": [r.event for r in session.errors],
            }
        )
    stream_end = min((s.sent[-1] - t0 for s in run["sessions"] if s.sent), default=0.0)
    procs = [k for k in run["samples"][0] if k != "t"] if run["samples"] else []
    last = max([0.0, *arrivals, *(s["t"] for s in run["samples"])])
    minutes = []
    for m in range(int(last // 60) + 1):
        inside = [x for x in timed if m * 60 <= x[1] < (m + 1) * 60]
        rss = [s for s in run["samples"] if m * 60 <= s["t"] < (m + 1) * 60]
        latencies = [x[2] for x in inside]
        minutes.append(
            {
                "minute": m + 1,
                "full": (m + 1) * 60 <= stream_end,
                "utterances_ended": sum(m * 60 <= x[0] < (m + 1) * 60 for x in timed),
                "finals": sum(m * 60 <= a < (m + 1) * 60 for a in arrivals),
                **seconds(spread(latencies, (50, 99), 3)),
                "rss_mib": {p: max((s[p] for s in rss if s[p] is not None), default=None) for p in procs},
            }
        )
    return {
        "totals": dict(totals),
        "errors_by_code": dict(errors),
        "latency_all": seconds(spread([x[2] for x in timed], (50, 99), 3)),
        "minutes": minutes,
        "sessions": details,
    }


def verdict(result: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Each check is True, False, or None when the run is too short to tell."""
    totals, full = result["totals"], [m for m in result["minutes"] if m["full"]]
    checks: dict[str, Any] = {
        "sessions_done": all(s["done"] and not s["failure"] for s in result["sessions"]),
        "processes_alive": all(run["alive"].values()),
        "lost_zero": totals.get("lost", 0) == 0,
        "duplicated_zero": totals.get("duplicated", 0) == 0,
        "latency_flat": None,
        "rss_flat": None,
    }
    if len(full) >= 2:
        first, last = full[0]["p50_s"], full[-1]["p50_s"]
        checks["latency_flat"] = first is not None and last is not None and last <= LATENCY_DRIFT * first
    if len(full) >= 3:
        base, end = result["minutes"][1]["rss_mib"], full[-1]["rss_mib"]
        growth = {p: (end[p] - base[p]) / base[p] if base[p] and end[p] else None for p in base}
        result["rss_growth_after_minute_2"] = {
            p: None if g is None else round(g, 3) for p, g in growth.items()
        }
        checks["rss_flat"] = all(g is not None and g < RSS_GROWTH for g in growth.values())
    return {"checks": checks, "pass": all(v is not False for v in checks.values())}


def table(result: dict[str, Any]) -> str:
    procs = list(result["minutes"][0]["rss_mib"]) if result["minutes"] else []
    workers = [p for p in procs if p.startswith("transcriber")]

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    head = f"{'minute':>7} | {'utts':>4} | {'finals':>6} | {'p50 s':>6} | {'p99 s':>6} | "
    head += f"{'RSS redis':>9} | {'RSS ingest':>10} | RSS transcriber(s) MiB"
    lines = [head, "-" * len(head)]
    for m in result["minutes"]:
        rss = m["rss_mib"]
        lines.append(
            f"{m['minute']:>6}{' ' if m['full'] else '*'} | {m['utterances_ended']:>4} | {m['finals']:>6} | "
            f"{sec(m['p50_s']):>6} | {sec(m['p99_s']):>6} | {mib(rss.get('redis')):>9} | "
            f"{mib(rss.get('ingest')):>10} | {' / '.join(mib(rss[w]) for w in workers)}"
        )
    lines.append("(* not a full minute of streaming: start-up lag or the tail after end of audio)")
    return "\n".join(lines)


def log_problems(procs: list[Proc]) -> dict[str, list[str]]:
    """WARNING/ERROR lines and tracebacks in each process's log (the first 20 of each)."""
    out = {}
    for proc in procs:
        lines = [line for line in proc.log.splitlines() if LOG_PROBLEM.search(line)]
        if lines:
            out[proc.name] = lines[:20] + ([f"... {len(lines) - 20} more"] if len(lines) > 20 else [])
    return out


def summary(result: dict[str, Any], judged: dict[str, Any], problems: dict[str, list[str]]) -> None:
    print(table(result))
    t = Counter[str](result["totals"])
    print(
        f"utterances sent {t['utterances_sent']}, finals {t['finals']}, lost {t['lost']}, "
        f"duplicated {t['duplicated']}, finals matching no utterance {t['unmatched_finals']}, "
        f"errors {result['errors_by_code'] or 0}; all minutes p50 {result['latency_all']['p50_s']} s, "
        f"p99 {result['latency_all']['p99_s']} s"
    )
    for n, s in enumerate(result["sessions"]):
        if s["failure"] or not s["done"]:
            print(f"session {n}: {s['failure'] or 'no done'}")
    if problems:
        print(f"warnings/errors in the logs: { {k: len(v) for k, v in problems.items()} } (see the JSON)")
    words = {True: "ok", False: "FAIL", None: "n/a (run too short)"}
    checks = ", ".join(f"{k} {words[v]}" for k, v in judged["checks"].items())
    print("verdict:", "PASS" if judged["pass"] else "FAIL", "-", checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions")
    parser.add_argument("--minutes", type=float, default=10, help="audio each session streams")
    parser.add_argument("--transcribers", type=int, default=1)
    parser.add_argument("--chunk-ms", type=int, default=20, choices=[10, 20, 30])
    parser.add_argument("--rss-every", type=float, default=5, help="seconds between RSS samples")
    parser.add_argument("--done-timeout", type=float, default=120, help="wait for done after end of audio")
    parser.add_argument("--keep-logs", type=Path, help="copy the services' logs into this directory")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    if args.sessions < 1 or args.minutes <= 0 or args.transcribers < 1:
        parser.error("--sessions and --transcribers must be >= 1 and --minutes > 0")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stream = Speech(workdir).stream(16000)
        plans = scripts(stream, args.minutes, args.sessions)
        audio_s = len(plans[0].pcm) / 2 / stream.rate
        print(
            f"soak: {args.sessions} sessions x {audio_s / 60:.1f} min of audio "
            f"({len(plans[0].utterances)} utterances each), {args.transcribers} transcriber(s)",
            flush=True,
        )
        stack = Stack.base(workdir, transcribers=args.transcribers)
        try:
            run = asyncio.run(soak(stack, plans, stream.rate, args))
            problems = log_problems([stack.redis, stack.ingest, *stack.transcribers])
        finally:
            stack.stop()
            if args.keep_logs:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, args.keep_logs / log.name)
    result = analyse(plans, run, args.chunk_ms)
    judged = verdict(result, run)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "model": POOL,
        "sessions": args.sessions,
        "transcribers": args.transcribers,
        "chunk_ms": args.chunk_ms,
        "audio_s_per_session": round(audio_s, 1),
        **result,
        "verdict": judged,
        "processes_alive_at_end": run["alive"],
        "log_problems": problems,
        "rss_samples_mib": run["samples"],
    }
    summary(result, judged, problems)
    save_report(args.out, report)
    return 0 if judged["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
