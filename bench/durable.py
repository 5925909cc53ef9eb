"""What ``--durable-ms`` costs a segment: XADD of a segment-sized entry alone, and followed by
``WAIT 1`` (one replica must have it), on a primary with one replica on loopback.

    .venv/bin/python -m bench.durable [--segments 500] [--out bench/results/durable.json]

Each entry is 3 s of 16 kHz PCM (96 kB), as the ingest queues them; the two ways alternate in
blocks of 50 so that neither gets a warmer machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import redis.asyncio as redis

from bench.common import save_report
from bench.measure import spread
from services.stack import ROOT, Proc, free_port, port_open, redis_args, wait_until

SEGMENT = b"\x01\x02" * 48_000  # 3 s of 16 kHz 16-bit PCM
BLOCK = 50


async def measure(port: int, segments: int) -> dict[str, list[float]]:
    client = redis.Redis(port=port)
    times: dict[str, list[float]] = {"xadd": [], "xadd+wait": []}
    try:
        for block in range(segments // BLOCK):
            label = "xadd" if block % 2 == 0 else "xadd+wait"
            for _ in range(BLOCK):
                started = time.perf_counter()
                await client.xadd("bench:durable", {"pcm": SEGMENT}, maxlen=200, approximate=True)
                if label == "xadd+wait":
                    assert await client.wait(1, 1000) >= 1
                times[label].append(time.perf_counter() - started)
    finally:
        await client.aclose()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "durable.json")
    args = parser.parse_args()
    primary, replica = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        procs = [
            Proc("primary", redis_args(primary, Path(folder)), Path(folder) / "primary.log"),
            Proc("replica", [*redis_args(replica, Path(folder)), "--replicaof", "127.0.0.1", str(primary)],
                 Path(folder) / "replica.log"),
        ]  # fmt: skip
        try:
            wait_until(lambda: port_open(primary) and port_open(replica), 10, "redis-server")
            times = asyncio.run(measure(primary, args.segments))
        finally:
            for proc in procs:
                proc.stop()
    report = {
        "command": ".venv/bin/python -m bench.durable",
        "segment_bytes": len(SEGMENT),
        "ms": {label: spread([t * 1000 for t in values], (50, 99), 3) for label, values in times.items()},
    }
    save_report(args.out, report, show=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
