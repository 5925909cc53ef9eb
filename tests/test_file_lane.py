"""The file lane: segments of uploaded files, queued on a pool's own file stream
(``keys.file_stream``) with the same fields as live finals, are answered like live finals, but
a transcriber takes them only when no live segment waits, at most ``--file-batch`` at a time; a
finals transcriber only once live segments have stopped for ``--file-idle-s``; the partials
transcriber one at a time, after its partials.

Real parts: a redis-server and transcriber processes running the real consume loop
(``services.transcriber.worker``). The model is ``bench.echo_worker``'s stand-in (as in
``tests/test_backlog.py``): it answers every segment "echo" after ``ECHO_MODEL_TIME`` seconds
slept off the event loop, so that the order of the work, which is what these tests check, does
not depend on how busy the 2 cores are; the model itself is the same for both lanes. The segments
are queued here directly, as the ingest queues them.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.client import PubSub
from websockets.sync.client import connect

from services import keys
from services.protocol import SegmentJob, SegmentResult
from services.stack import Stack, counter, free_port, wait_until
from services.transcriber.worker import BLOCK_MS
from tools.speech import Speech

POOL = "file-lane-test"
FILE_BATCH = 4
FILES = keys.file_stream(POOL)
# --backend ctranslate2 only so that parsing the flags does not import torch (slow to start).
FLAGS: tuple[str, ...] = ("--serve-as", POOL, "--backend", "ctranslate2", "--batch-wait-ms", "0")
FLAGS += ("--file-batch", str(FILE_BATCH))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A private redis-server; each test starts its own transcribers."""
    stack = Stack(tmp_path)
    yield stack
    stack.stop()


def start(stack: Stack, *flags: str, model_time: str = "0,0", role: str = "all") -> int:
    """One echo transcriber in ``role``, once it serves; its metrics port."""
    port = free_port()
    env = {"ECHO_MODEL_TIME": model_time}
    stack.start_transcriber(
        "echo", *FLAGS, "--role", role, *flags, env=env, module="bench.echo_worker", metrics_port=port
    )
    stack.wait_serving(POOL, role=role, timeout=60)
    return port


def job(session: str, segment: int, partial: bool = False) -> dict[Any, Any]:
    """A 0.1 s segment's stream entry, queued now (live finals and file segments alike)."""
    now, start = time.time(), segment * 1.0
    return SegmentJob(
        session, segment, bytes(3200), start, start + 0.1, now, now, partial=partial
    ).to_fields()


def queue(client: redis.Redis, entries: list[dict[Any, Any]]) -> None:
    """Queue file segments at once (MULTI), as the ingest does a file's: the transcriber's first
    read sees them all."""
    with client.pipeline(transaction=True) as pipe:
        for fields in entries:
            pipe.xadd(FILES, fields, maxlen=1000, approximate=True)
        pipe.execute()


def listen(pubsub: PubSub, *sessions: str) -> None:
    """Listen on ``sessions``' result channels, each subscription confirmed (the transcriber
    skips the segments of sessions nobody listens to)."""
    pubsub.subscribe(*(keys.result_channel(s) for s in sessions))
    for _ in sessions:
        wait_until(lambda: pubsub.get_message(timeout=0.1), 5, "a subscription's confirmation")


def results(pubsub: PubSub, count: int, timeout: float) -> list[SegmentResult]:
    """The next ``count`` results, in the order they arrived."""
    got: list[SegmentResult] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{len(got)} results of {count} after {timeout} s: {got}"
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            got.append(SegmentResult.from_json(message["data"]))
    return got


def arrived(pubsub: PubSub) -> list[SegmentResult]:
    """Every result that has arrived and not been read yet."""
    got = []
    while (message := pubsub.get_message(timeout=0.1)) is not None:
        if message["type"] == "message":
            got.append(SegmentResult.from_json(message["data"]))
    return got


def drained(client: redis.Redis, stream: str) -> bool:
    """Every entry of ``stream`` delivered, acknowledged and trimmed away."""
    (group,) = client.xinfo_groups(stream)
    return bool(client.xlen(stream) == 0 and group["pending"] == 0 and group["lag"] == 0)


def test_file_segments_are_answered_once_each_and_trimmed(stack: Stack) -> None:
    """Batch after batch, without a wait in between: a loop that blocked on the live streams
    (up to BLOCK_MS) before it looked at the files would leave that gap between two batches."""
    port = start(stack)
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload")
        queue(client, [job("upload", n) for n in range(10)] + [job("gone", n) for n in range(2)])
        got = results(pubsub, 10, timeout=20)
        wait_until(lambda: drained(client, FILES), 10, "the file stream to be trimmed")
        assert pubsub.get_message(timeout=0.5) is None  # nothing answered twice
    assert sorted(r.segment for r in got) == list(range(10))
    assert {(r.session, r.outcome, r.text, r.partial) for r in got} == {("upload", "text", "echo", False)}
    batches = sorted({(r.timings["model_start"], r.timings["model_end"]) for r in got})
    assert [int(r.timings["batch"]) for r in got] == [FILE_BATCH] * 8 + [2] * 2
    gaps = [start - end for (_, end), (start, _) in itertools.pairwise(batches)]
    assert max(gaps) < BLOCK_MS / 1000 / 2, gaps
    assert counter(port, "stt_file_segments_transcribed_total", model=POOL) == 10
    assert counter(port, "stt_segments_skipped_total", model=POOL) == 2
    gauges = ("stt_file_stream_length", "stt_file_stream_pending")
    wait_until(lambda: all(counter(port, g, model=POOL) == 0 for g in gauges), 10, "the file gauges")


def test_a_live_segment_waits_for_at_most_one_file_batch(stack: Stack) -> None:
    """12 file segments (0.25 s of model time each: 1 s a batch of 4) and, once the first file
    batch is answered, a live final: it goes before the file segments still queued, alone, and at
    most one file batch (one the transcriber was just starting) starts between its queueing and
    its model start. Served first come, first served, it would come after every file segment
    (``later`` fails); with files read like finals, up to --max-batch (8) at a time, the batch
    sizes fail; files read while a live segment waits make ``overtaking`` more than one."""
    start(stack, model_time="0,0.25")
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload", "talker")
        queue(client, [job("upload", n) for n in range(12)])
        first = results(pubsub, 1, timeout=20)
        client.xadd(keys.segment_stream(POOL), job("talker", 0))
        got = first + results(pubsub, 12, timeout=30)
    (live,) = [r for r in got if r.session == "talker"]
    files = [r for r in got if r.session == "upload"]
    assert sorted(r.segment for r in files) == list(range(12))
    assert live.timings["batch"] == 1  # alone: never batched with file segments
    assert max(r.timings["batch"] for r in files) <= FILE_BATCH
    queued, served = live.timings["enqueued_at"], live.timings["model_start"]
    overtaking = {r.timings["model_start"] for r in files if queued < r.timings["model_start"] < served}
    assert len(overtaking) <= 1, f"{len(overtaking)} file batches started while the live segment waited"
    later = [r for r in files if r.timings["model_start"] > served]
    assert len(later) >= FILE_BATCH, f"only {len(later)} file segments were left after the live one"
    assert got.index(live) < len(got) - FILE_BATCH


def test_a_partials_transcriber_takes_file_segments_one_at_a_time_after_its_partials(
    stack: Stack,
) -> None:
    """The partials transcriber (nice +19 in `make run`) is where files go while live traffic
    keeps the finals transcribers off the file lane: one segment at a time, so a partial queued
    behind a file's segments waits for at most one of them."""
    start(stack, role="partials", model_time="0,0.25")
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload")
        queue(client, [job("upload", n) for n in range(6)])
        first = results(pubsub, 1, timeout=20)
        client.xadd(keys.partials_stream(POOL), job("upload", 6, partial=True))
        got = first + results(pubsub, 6, timeout=30)
        wait_until(lambda: drained(client, FILES), 10, "the file stream to be trimmed")
    (partial,) = [r for r in got if r.partial]
    files = [r for r in got if not r.partial]
    assert sorted(r.segment for r in files) == list(range(6))
    assert {r.timings["batch"] for r in files} == {1}
    queued, served = partial.timings["enqueued_at"], partial.timings["model_start"]
    overtaking = [r for r in files if queued < r.timings["model_start"] < served]
    assert len(overtaking) <= 1, f"{len(overtaking)} file segments started while the partial waited"
    assert len([r for r in files if r.timings["model_start"] > served]) >= 3


def test_a_finals_transcriber_leaves_files_alone_while_live_segments_come(stack: Stack) -> None:
    """Live finals one after another, less than --file-idle-s apart, with a file queued: the finals
    transcriber serves only the live ones, and takes the file once they have stopped for
    --file-idle-s. With the idle time 0 the file's batches would go between them."""
    idle_s = 1.5
    start(stack, "--file-idle-s", str(idle_s), model_time="0,0.1", role="finals")
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload", "talker")
        client.xadd(keys.segment_stream(POOL), job("talker", 0))
        got = results(pubsub, 1, timeout=20)
        queue(client, [job("upload", n) for n in range(4)])
        for n in range(1, 6):
            time.sleep(0.5)
            client.xadd(keys.segment_stream(POOL), job("talker", n))
        got += results(pubsub, 9, timeout=30)
    live = [r for r in got if r.session == "talker"]
    files = [r for r in got if r.session == "upload"]
    assert sorted(r.segment for r in live) == list(range(6)) and len(files) == 4
    last_live = max(r.timings["model_end"] for r in live)
    first_file = min(r.timings["model_start"] for r in files)
    assert first_file > last_live + idle_s - 0.2, (first_file - last_live, got)


def test_a_finals_transcriber_leaves_files_alone_while_anyone_in_the_pool_talks(stack: Stack) -> None:
    """The pause that lets a finals transcriber take files is the whole pool's, not its own: here
    it reads no live entry at all, but partial requests (someone is talking) keep coming to the
    pool's partials transcriber, so the files go to that one, one segment at a time, and the finals
    transcriber (batches of FILE_BATCH) takes them only once the talking has stopped for
    --file-idle-s. Judged by its own reads alone it would have taken them at once: the 8 live
    talkers of bench.files then waited behind its file batches (p95 +63 %)."""
    idle_s = 1.5
    start(stack, "--file-idle-s", str(idle_s), model_time="0,0.3", role="partials")
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload", "talker")
        talking = threading.Event()

        def talk() -> None:  # a partial request every 0.4 s, as the ingest asks while one talks
            with redis.Redis.from_url(stack.redis_url) as talker:
                for n in itertools.count():
                    talker.xadd(keys.partials_stream(POOL), job("talker", n, partial=True))
                    talking.set()
                    if stop_talking.wait(0.4):
                        return

        stop_talking = threading.Event()
        talker = threading.Thread(target=talk)
        talker.start()
        try:
            talking.wait(5)
            time.sleep(0.5)  # the partials transcriber has read one: the pool is live
            start(stack, "--file-idle-s", str(idle_s), model_time="0,0.3", role="finals")
            queue(client, [job("upload", n) for n in range(24)])
            time.sleep(4)
        finally:
            stop_talking.set()
            talker.join()
        talking_ended = time.time()
        files: list[SegmentResult] = []
        while len(files) < 24:
            files += [r for r in results(pubsub, 1, timeout=60) if r.session == "upload"]
    assert sorted(r.segment for r in files) == list(range(24))
    while_talking = [r for r in files if r.timings["model_start"] < talking_ended + idle_s - 0.2]
    assert while_talking and {r.timings["batch"] for r in while_talking} == {1}, files
    assert FILE_BATCH in {r.timings["batch"] for r in files}, "the finals transcriber took none after"


def test_a_talker_who_starts_after_a_quiet_spell_stops_new_file_work_at_once(
    stack: Stack, speech: Speech
) -> None:
    """A finals transcriber busy with a file in a quiet pool, then someone starts talking: the
    ingest stamps the pool's live key as soon as the segment opens, so no new file work begins
    while the talker speaks, and the talker's final waits for at most the file batch begun before.
    Stamped by the transcribers alone (on reading the talker's segment, once spoken whole), the
    file kept the transcriber for the whole sentence: bench.files' talkers who began beside a
    file waited behind packs begun in the meantime."""
    start(stack, "--file-idle-s", "1.5", "--file-batch", "1", model_time="0,0.3", role="finals")
    uri, _ = stack.start_ingest(POOL)
    stream = speech.stream(16000, (5,))  # one long sentence (about 9 s)
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload")
        queue(client, [job("upload", n) for n in range(200)])
        results(pubsub, 3, timeout=20)  # the file is being transcribed
        with connect(f"{uri}/?sample_rate=16000", additional_headers={"Authorization": "Bearer k"}) as ws:
            json.loads(ws.recv())  # ready
            began = time.time()
            for n, offset in enumerate(range(0, len(stream.pcm), 640)):
                ws.send(stream.pcm[offset : offset + 640])
                time.sleep(max(0.0, began + (n + 1) * 0.02 - time.time()))
            ws.send(json.dumps({"type": "eof"}))
            final = next(e for e in map(json.loads, ws) if e["type"] == "final")
            answered = time.time()
        files = [r for r in arrived(pubsub) if r.session == "upload"]
    assert final["text"] == "echo"
    # The segment opens some 0.3 s into the sentence; a file batch begun just before may run 0.3 s.
    opened = began + stream.utterances[0][0] + 0.3
    during = [r.timings["model_start"] for r in files if opened + 0.5 < r.timings["model_start"] < answered]
    assert not during, f"{len(during)} file batches began while the talker spoke"
    assert answered - (began + stream.utterances[0][1]) < 2.0


def test_file_segments_a_dead_consumer_left_pending_are_reclaimed(stack: Stack) -> None:
    """Two file entries held by a consumer that died: one is reclaimed and answered, the other
    had been delivered too often already (``--max-attempts 2``) and goes to the dead-letter
    stream, its session told; both are acknowledged and trimmed."""
    with redis.Redis.from_url(stack.redis_url) as client, client.pubsub() as pubsub:
        listen(pubsub, "upload")
        client.xgroup_create(FILES, keys.GROUP, id="0", mkstream=True)
        ids = [client.xadd(FILES, job("upload", n)) for n in range(2)]
        client.xreadgroup(keys.GROUP, "dead", {FILES: ">"})
        for _ in range(2):  # entry 1: delivered three times already
            client.xclaim(FILES, keys.GROUP, "dead", 0, [ids[1]])
        port = start(stack, "--claim-idle-ms", "300", "--max-attempts", "2")
        got = {r.segment: r for r in results(pubsub, 2, timeout=20)}
        wait_until(lambda: drained(client, FILES), 10, "the file stream to be trimmed")
        dead: Any = client.xrange(keys.dead_letter_stream(POOL))
    assert got[0].outcome == "text" and got[0].text == "echo"
    assert got[1].outcome == "error" and "gave up after 3 failed attempts" in (got[1].reason or "")
    assert [(fields[b"entry"], fields[b"stream"]) for _, fields in dead] == [(ids[1], FILES.encode())]
    assert counter(port, "stt_segments_reclaimed_total", model=POOL) == 1
    assert counter(port, "stt_segments_dead_lettered_total", model=POOL) == 1
