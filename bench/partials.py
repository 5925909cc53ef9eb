"""Final latency with partial results off and on, for the two ways of serving partials.

Starts a real redis-server, one ingest and whisper-base transcribers in one of two layouts:

- ``shared``: one transcriber (``--role all``) serves finals first and partials when no final
  waits; a partial already running when a segment ends holds its final back;
- ``split``: one ``--role finals`` transcriber and one ``--role partials`` transcriber at nice 19
  (what ``make run`` and Compose start), so partials only get the CPU the finals leave.

In each layout one client streams long espeak-ng sentences (about 9 s, 3 s and 9 s) at real-time
pace, ``--repeats`` times with partials off and on alternately, and the end-of-speech -> text
latency of every sentence's final is timed at the client.

    .venv/bin/python -m bench.partials [--repeats 3] [--out bench/results/partials.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import match_finals, save_report, stream_real_time
from services.stack import POOL, ROOT, Stack, alive, serving, wait_until
from tools.speech import Speech, Stream

LAYOUTS = ("shared", "split")


def start(layout: str, workdir: Path) -> Stack:
    if layout == "shared":
        return Stack.base(workdir)
    stack = Stack.base(workdir, transcriber_flags=("--role", "finals"))
    stack.start_base_transcriber("--role", "partials")
    # Only a finals transcriber marks the pool alive: wait for the partials one's readiness key.
    wait_until(lambda: serving(stack.redis_url, POOL, "partials"), 120, "the partials transcriber")
    return stack


def one_run(uri: str, stream: Stream, partial: bool) -> dict[str, Any]:
    session = asyncio.run(stream_real_time(uri, stream, 20, partial))
    mine, _ = match_finals(session.finals, stream.utterances)
    ends = [end for _, end in stream.utterances]
    latencies = [got[-1].at - session.sent_at(end) for end, got in zip(ends, mine, strict=True) if got]
    return {
        "eos_to_text_s": [round(x, 3) for x in latencies],
        "partials": sum(r.event["type"] == "partial" for r in session.events),
        "texts": [r.event["text"] for r in session.finals],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "partials.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": ".venv/bin/python -m bench.partials",
        "model": "whisper-base (transformers, fp32, CPU)",
        "layouts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stream = Speech(workdir).stream(16000, (5, 0, 5))
        for layout in args.layouts.split(","):
            stack = start(layout, workdir)
            try:
                assert alive(stack.redis_url, POOL)
                runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
                for _ in range(args.repeats):
                    for mode in ("off", "on"):
                        runs[mode].append(one_run(stack.uri, stream, mode == "on"))
            finally:
                stack.stop()
            result: dict[str, Any] = {"runs": runs}
            for mode in ("off", "on"):
                every = [x for run in runs[mode] for x in run["eos_to_text_s"]]
                result[mode] = {
                    "mean_s": round(statistics.mean(every), 3),
                    "median_s": round(statistics.median(every), 3),
                    "max_s": max(every),
                    "partials_per_run": statistics.mean(run["partials"] for run in runs[mode]),
                }
            result["same_finals"] = all(
                a["texts"] == b["texts"] for a, b in zip(runs["off"], runs["on"], strict=True)
            )
            result["extra_mean_s"] = round(result["on"]["mean_s"] - result["off"]["mean_s"], 3)
            report["layouts"][layout] = result
            print(
                f"{layout:6s}: final latency mean {result['off']['mean_s']:.2f} s without partials, "
                f"{result['on']['mean_s']:.2f} s with "
                f"({result['on']['partials_per_run']:.0f} partials a run): "
                f"{result['extra_mean_s']:+.2f} s; max {result['off']['max_s']:.2f} / "
                f"{result['on']['max_s']:.2f} s; same finals: {result['same_finals']}",
                flush=True,
            )
    save_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
