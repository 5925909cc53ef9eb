"""Turn events for voice agents: how much earlier Flux's EagerEndOfTurn comes than EndOfTurn.

    .venv/bin/python -m bench.turns [--sessions 3] [--gap 1.0] [--env KEY=VALUE ...]
                                    [--out bench/results/turns.json]

Starts `make run`'s stack (``python -m services.stack``, its defaults unless ``--env`` overrides
one) on a private redis-server, as ``bench.fidelity`` does, and streams the real recordings of
``bench/evalset`` (material nothing was tuned on), dealt round-robin into ``--sessions``
sessions, each utterance followed by ``--gap`` seconds of silence, at real-time pace in 20 ms
frames, over ``/v2/listen?model=flux-general-en&eager_eot_threshold=0.5``. For each turn it
records when its last ``EagerEndOfTurn`` (if any) and its ``EndOfTurn`` arrived, and whether the
turn resumed after a guess. Reported: turns, the share with an EagerEndOfTurn, how often a turn
resumed after one, and the lead (EndOfTurn minus the EagerEndOfTurn just before it) p50/p95/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bench.common import save_report
from bench.fidelity import EVALSET, Utterance, load_evalset, stack
from bench.measure import spread
from services.stack import ROOT

RATE = 16000
FRAME = RATE * 2 // 50  # 20 ms of 16-bit PCM
QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.5"


async def one_session(uri: str, utts: list[Utterance], gap: float) -> list[tuple[float, dict[str, Any]]]:
    """Stream ``utts`` in real time; every message received, with its arrival time."""
    silence = bytes(int(gap * RATE) * 2)
    pcm = b"".join(u.pcm() + silence for u in utts) + bytes(RATE * 2)
    received: list[tuple[float, dict[str, Any]]] = []
    async with connect(f"{uri}/v2/listen?{QUERY}", additional_headers={"Authorization": "Token x"}) as ws:

        async def read() -> None:
            async for message in ws:
                received.append((time.monotonic(), json.loads(message)))

        reader = asyncio.create_task(read())
        start = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), FRAME)):
            await ws.send(pcm[offset : offset + FRAME])
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, 120)
    return received


def turns_of(received: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per turn: whether it had a guess, resumed after one, and the guess's lead over its end."""
    turns: dict[int, dict[str, Any]] = {}
    for at, message in received:
        if message.get("type") != "TurnInfo":
            continue
        turn = turns.setdefault(message["turn_index"], {"eager": None, "resumed": 0, "end": None})
        event = message["event"]
        if event == "EagerEndOfTurn":
            turn["eager"] = at
        elif event == "TurnResumed":
            turn["resumed"] += 1
            turn["eager"] = None
        elif event == "EndOfTurn":
            turn["end"], turn["text"] = at, message["transcript"]
    return [t for t in turns.values() if t["end"] is not None and t.get("text")]


async def run_all(uri: str, utts: list[Utterance], sessions: int, gap: float) -> list[dict[str, Any]]:
    dealt = [utts[i::sessions] for i in range(sessions)]
    received = await asyncio.gather(*(one_session(uri, group, gap) for group in dealt if group))
    return [turn for r in received for turn in turns_of(r)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=3, help="sessions streaming at once")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of silence after each utterance")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the stack (make run's)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "turns.json")
    args = parser.parse_args(argv)
    utts = load_evalset(EVALSET)
    with tempfile.TemporaryDirectory() as workdir, stack(args.env, Path(workdir), "turns") as uri:
        turns = asyncio.run(run_all(uri, utts, args.sessions, args.gap))
    eager = [t for t in turns if t["eager"] is not None]
    resumed = sum(t["resumed"] for t in turns)
    told = len(eager) + resumed  # every guess told: those that ended their turn and those resumed
    report = {
        "command": shlex.join(
            [sys.executable.rsplit("/", 1)[-1], "-m", "bench.turns", *(argv or sys.argv[1:])]
        ),
        "utterances": len(utts),
        "turns": len(turns),
        "turns_with_eager_end": len(eager),
        "eager_ends_resumed": resumed,
        "resumed_share": round(resumed / told, 3) if told else None,
        "lead_s": spread([t["end"] - t["eager"] for t in eager], (50, 95, 100), 3),
    }
    print(json.dumps(report, indent=2))
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
