"""The backlog signal KEDA scales on (review item 2), with real parts: a redis-server, three
transcriber processes (the real consume loop, ``bench.echo_worker``'s instant model slowed by
``ECHO_MODEL_TIME``, a different speed each so that batches finish out of order) and a backlog
queued faster than they serve it.

While they drain it, every sample of ``XINFO GROUPS`` (atomic with ``XLEN``) must give a lag
that is not null and equals the entries not yet delivered, and the stream must keep only what
the group still needs: at the end it is empty. On the old code (XACK + XDEL) the lag went null
whenever the newest delivered entry was deleted while an older one was still pending.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from services import keys
from services.ingest.pipeline.backlog import waiting
from services.protocol import SegmentJob
from services.stack import Stack, counter, free_port, wait_until

POOL = "backlog-test"
JOBS = 800
SESSIONS = 4
PARTIALS = 60
MALFORMED_AT = JOBS // 2  # one entry the workers cannot decode: the dead-letter path
# Seconds per batch, per segment (ECHO_MODEL_TIME) of each transcriber.
MODEL_TIMES = ("0.01,0.005", "0.02,0.01", "0.04,0.02")  # at most ~175 entries/s in all
MAX_BATCH = 2
# Acknowledged entries the stream may still hold behind the oldest pending one. In-flight work
# is at most MAX_BATCH per transcriber; the slowest one holds its batch while the others go
# through a few of theirs. What matters is that it does not grow with what was processed.
MAX_RETAINED = 40


@dataclass(frozen=True)
class Sample:
    lag: int | None
    undelivered: int
    pending: int
    length: int


def stream_id(raw: bytes) -> tuple[int, int]:
    ms, seq = raw.split(b"-")
    return int(ms), int(seq)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[Stack, int]]:
    """The stack and the first transcriber's metrics port."""
    stack, port = Stack(tmp_path), free_port()
    try:
        for n, times in enumerate(MODEL_TIMES):
            flags = ("--serve-as", POOL, "--max-batch", str(MAX_BATCH), "--batch-wait-ms", "0")
            env = {"ECHO_MODEL_TIME": times}
            stack.start_transcriber(
                "echo", *flags, env=env, module="bench.echo_worker", metrics_port=port if n == 0 else 0
            )
        stack.wait_serving(POOL, count=len(MODEL_TIMES), timeout=60)
        yield stack, port
    finally:
        stack.stop()


def job(n: int, partial: bool = False) -> dict[Any, Any]:
    """Segment ``n``'s entry; a partial request is queued already stale (answered by no one)."""
    now = time.time() - (60 if partial else 0)
    return SegmentJob(
        f"s{n % SESSIONS}", n, bytes(320), n * 0.5, n * 0.5 + 0.01, now, now, partial=partial
    ).to_fields()


def sample(client: redis.Redis, stream: str, added: list[tuple[int, int]]) -> Sample:
    """One atomic look: the group's lag, pending and last-delivered-id, and the stream's length;
    the entries not yet delivered are those added after the last-delivered-id."""
    with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
        groups, length = pipe.execute()
    (group,) = [g for g in groups if g["name"] == keys.GROUP.encode()]
    delivered = bisect.bisect_right(added, stream_id(group["last-delivered-id"]))
    return Sample(group["lag"], len(added) - delivered, int(group["pending"]), int(length))


def test_lag_stays_valid_and_exact_while_three_transcribers_drain_a_backlog(
    pool: tuple[Stack, int],
) -> None:
    stack, metrics_port = pool
    stream, partials = keys.segment_stream(POOL), keys.partials_stream(POOL)

    def gauge() -> float:
        return counter(metrics_port, "stt_stream_lag", model=POOL)

    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as results:
        results.subscribe(*(keys.result_channel(f"s{n}") for n in range(SESSIONS)))
        wait_until(lambda: results.get_message(timeout=0.1), 5, "the subscription")  # its confirmations
        with client.pipeline(transaction=False) as pipe:
            for n in range(JOBS):
                pipe.xadd(stream, {"session": "s0"} if n == MALFORMED_AT else job(n))
            for n in range(PARTIALS):
                pipe.xadd(partials, job(n, partial=True))
            added = [stream_id(raw) for raw in pipe.execute()[:JOBS]]  # in order: ids grow
        answered, samples, gauges = 0, [], []
        started = time.monotonic()
        scraped = 0.0
        while time.monotonic() < started + 25:
            samples.append(sample(client, stream, added))
            if time.monotonic() > scraped + 0.25:  # the gauge follows the lag every heartbeat (2 s)
                scraped = time.monotonic()
                gauges.append(gauge())
            while message := results.get_message(timeout=0):
                answered += message["type"] == "message"
            last = samples[-1]
            if answered == JOBS - 1 and last.undelivered == 0 and last.pending == 0:
                break
        drained = time.monotonic() - started
        nulls = sum(s.lag is None for s in samples)
        wrong = [s for s in samples if s.lag is not None and s.lag != s.undelivered]
        retained = max(s.length - s.pending - s.undelivered for s in samples)
        print(
            f"{len(samples)} samples while {len(MODEL_TIMES)} transcribers drained {JOBS} entries "
            f"in {drained:.1f} s: "
            f"lag null in {nulls}, not the undelivered count in {len(wrong)}, "
            f"at most {retained} acknowledged entries kept"
        )
        assert answered == JOBS - 1, f"{answered} results of {JOBS - 1}"
        assert len(samples) >= 100 and max(s.undelivered for s in samples) >= JOBS // 2  # a real backlog
        assert nulls == 0, f"lag was null in {nulls} of {len(samples)} samples"
        assert not wrong, wrong[:5]
        assert retained <= MAX_RETAINED
        assert client.xlen(stream) == 0  # every entry acknowledged is gone: memory stays bounded
        assert max(gauges) > 0 and not any(math.isnan(g) for g in gauges), gauges
        wait_until(lambda: gauge() == 0, 5, "stt_stream_lag to reach 0")
        wait_until(lambda: client.xlen(partials) == 0, 10, "the partials stream to drain")
        (group,) = client.xinfo_groups(partials)
        assert group["lag"] == 0 and group["pending"] == 0
        dead: Any = client.xrange(keys.dead_letter_stream(POOL))
        assert len(dead) == 1 and dead[0][1][b"entry"] == b"%d-%d" % added[MALFORMED_AT]


def test_what_waits_counts_pending_and_unread_not_what_the_trim_still_holds(tmp_path: Path) -> None:
    """Admission and eager endpointing read ``backlog.waiting``: with acknowledged entries held
    behind an older pending one (the trim keeps them), the stream's length says more."""
    stack = Stack(tmp_path)
    stream = keys.segment_stream(POOL)
    try:
        with redis.Redis.from_url(stack.redis_url) as client:
            assert asyncio.run(_waiting(stack.redis_url, stream)) == 0  # no stream yet
            client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            ids = [client.xadd(stream, job(n)) for n in range(6)]
            client.xreadgroup(keys.GROUP, "c1", {stream: ">"}, count=4)
            client.xack(stream, keys.GROUP, *ids[1:4])  # the oldest (ids[0]) is still being transcribed
            assert client.xlen(stream) == 6
            assert asyncio.run(_waiting(stack.redis_url, stream)) == 1 + 2  # pending + unread
    finally:
        stack.stop()


async def _waiting(url: str, stream: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return await waiting(client, stream)
    finally:
        await client.aclose()
