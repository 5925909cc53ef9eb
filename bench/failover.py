"""What a Redis failover loses, with and without ``--durable-ms``: a primary, two replicas and
three Sentinels on loopback (``tools.sentinels``); a writer XADDs segment-sized entries (96 kB, 3 s
of 16 kHz PCM) at ``--rate`` a second (a busy deployment's segments) to the primary the Sentinels
name, each XADD followed by
``WAIT 1 <ms>`` when durable; the primary is SIGKILLed mid-stream; once a replica is promoted,
every entry whose XADD had been acknowledged is looked up on the new primary.

    .venv/bin/python -m bench.failover [--seconds 3] [--rate 200] [--durable-ms 100]

Reports, for each way: entries acknowledged before the kill, how many of them the new primary
lacks, and the seconds from the kill to the first XADD the new primary accepted.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from redis.sentinel import Sentinel

from bench.common import save_report
from services.stack import ROOT
from tools.sentinels import SERVICE, Topology

ENTRY = b"\x01\x02" * 48_000
STREAM = "bench:failover"


def run(durable_ms: int, seconds: float, rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        topology = Topology(Path(folder))
        try:
            hosts = [("127.0.0.1", p) for p in topology.sentinel_ports]
            sentinel = Sentinel(hosts, socket_timeout=1.0)  # type: ignore[no-untyped-call]
            client = sentinel.master_for(SERVICE, socket_timeout=2.0)  # type: ignore[no-untyped-call]
            acked: list[bytes] = []
            stop, killed = threading.Event(), threading.Event()
            first_after: list[float] = []
            kill_at: list[float] = []

            def write() -> None:
                started = time.monotonic()
                while not stop.is_set():
                    time.sleep(max(0.0, started + len(acked) / rate - time.monotonic()))
                    try:
                        entry_id = client.xadd(STREAM, {"pcm": ENTRY})
                        if durable_ms:
                            client.wait(1, durable_ms)
                    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
                        time.sleep(0.05)
                        continue
                    if killed.is_set():
                        first_after.append(time.monotonic() - kill_at[0])
                        return
                    acked.append(entry_id)

            writer = threading.Thread(target=write)
            writer.start()
            time.sleep(seconds)
            kill_at.append(time.monotonic())
            killed.set()
            topology.procs["primary"].popen.send_signal(signal.SIGKILL)
            writer.join(60)
            stop.set()
            survivors = {entry_id for entry_id, _ in read_all(client)}
            lost = [entry_id for entry_id in acked if entry_id not in survivors]
        finally:
            topology.stop()
    return {
        "durable_ms": durable_ms,
        "acknowledged_before_kill": len(acked),
        "lost": len(lost),
        "failover_s": round(first_after[0], 2) if first_after else None,
    }


def read_all(client: Any) -> list[Any]:
    """The stream on the new primary (a first read may still meet the failover)."""
    for _ in range(10):
        try:
            entries: list[Any] = client.xrange(STREAM)
            return entries
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.5)
    raise RuntimeError("the new primary did not answer")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="writing before the kill")
    parser.add_argument("--rate", type=float, default=200.0, help="entries a second")
    parser.add_argument("--durable-ms", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "failover.json")
    args = parser.parse_args()
    report = {
        "command": ".venv/bin/python -m bench.failover",
        "runs": [run(0, args.seconds, args.rate), run(args.durable_ms, args.seconds, args.rate)],
    }
    save_report(args.out, report, show=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
