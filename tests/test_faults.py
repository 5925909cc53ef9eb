"""Faults injected into real processes: nothing lost, nothing hangs.

Each test runs its own redis-server, transcriber(s) and ingest (services.stack.Stack.base)
with the real whisper-base, kills or stops something, and checks what clients see.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import soundfile as sf

from services import keys
from services.lifecycle import connect_redis
from services.stack import POOL, Stack, alive, open_sessions, segments_queued, serving, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech, wer


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()


def pending_of(stack: Stack) -> dict[str, int]:
    with redis.Redis.from_url(stack.redis_url) as client:
        try:
            summary: Any = client.xpending(keys.segment_stream(POOL), keys.GROUP)
        except redis.ResponseError:
            return {}
        return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or []}


def assert_exactly_once_in_order(events: list[dict[str, Any]], texts: tuple[str, ...]) -> None:
    got = finals(events)
    assert [f["segment"] for f in got] == list(range(len(texts))), got
    for final, text in zip(got, texts, strict=True):
        assert wer(text, final["text"]) <= 0.35, (text, final["text"])
    assert events[-1] == {"type": "done"}


def test_sigkill_of_a_transcriber_mid_batch_loses_and_duplicates_nothing(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(
        tmp_path, transcribers=2, transcriber_flags=("--claim-idle-ms", "2000", "--max-batch", "1")
    )
    stacks.append(stack)
    victim, survivor = stack.transcribers
    wait_until(lambda: serving(stack.redis_url, POOL) == 2, 120, "both transcribers")
    victim_pid = str(victim.popen.pid)
    streams = [speech.stream(16000, pick) for pick in [(0, 1), (2, 3), (4, 0)]]
    with ThreadPoolExecutor(3) as pool:
        runs = [pool.submit(run_client, stack.uri, s.path, "--fast") for s in streams]
        # Kill the victim while it holds a segment it has not answered yet.
        wait_until(
            lambda: any(f"-{victim_pid}-" in name and n for name, n in pending_of(stack).items()),
            60,
            "the victim to take a segment",
            interval=0.01,
        )
        victim.popen.send_signal(signal.SIGKILL)
        results = [run.result() for run in runs]
    for stream, (code, events, stderr) in zip(streams, results, strict=True):
        assert code == 0, stderr
        assert_exactly_once_in_order(events, stream.texts)
    assert "reclaimed entry" in survivor.log


def test_a_segment_the_model_keeps_failing_goes_to_the_dead_letter_stream(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(
        tmp_path,
        transcriber_flags=("--claim-idle-ms", "300", "--max-attempts", "2"),
        transcriber_module="tests.failpoint_transcriber",
        transcriber_env={"STT_FAILPOINT_SEGMENTS": "1"},  # the model raises on every segment 1
    )
    stacks.append(stack)
    stream = speech.stream(16000, (0, 1, 2))
    code, events, stderr = run_client(stack.uri, stream.path, "--fast")
    assert code == 0, stderr
    assert [(f["segment"], wer(stream.texts[f["segment"]], f["text"]) <= 0.35) for f in finals(events)] == [
        (0, True),
        (2, True),
    ]
    errors = [e for e in events if e["type"] == "error"]
    assert [(e["code"], e["segment"]) for e in errors] == [("transcription_failed", 1)]
    assert "2 failed attempts" in errors[0]["message"]
    assert events[-1] == {"type": "done"}
    with redis.Redis.from_url(stack.redis_url) as client:
        dead: Any = client.xrange(keys.dead_letter_stream(POOL))
        assert len(dead) == 1 and dead[0][1][b"segment"] == b"1"
        assert client.xlen(keys.segment_stream(POOL)) == 0


def test_a_dead_lettered_segment_is_told_on_its_own_channel(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    """Segment 1 of each channel of a stereo session fails for good: each channel is told of its
    own (the error once went to channel 0 alone, and channel 1's segment waited for its timeout)."""
    stack = Stack.base(
        tmp_path,
        transcriber_flags=("--claim-idle-ms", "300", "--max-attempts", "1"),
        transcriber_module="tests.failpoint_transcriber",
        transcriber_env={"STT_FAILPOINT_SEGMENTS": "1"},
    )
    stacks.append(stack)
    mono = np.frombuffer(speech.stream(16000, (0, 1, 2)).pcm, np.int16)
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([mono, mono], axis=1), 16000, subtype="PCM_16")
    code, events, stderr = run_client(
        stack.uri, stereo, "--fast", "--channels", "2", "--roles", "agent,customer"
    )
    assert code == 0, stderr
    errors = sorted(
        (e["channel"], e["role"], e["segment"], e["code"]) for e in events if e["type"] == "error"
    )
    assert errors == [(0, "agent", 1, "transcription_failed"), (1, "customer", 1, "transcription_failed")]
    assert sorted((f["channel"], f["segment"]) for f in finals(events)) == [(0, 0), (0, 2), (1, 0), (1, 2)]


def test_redis_restart_fails_live_sessions_clearly_and_new_ones_work_within_10s(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(tmp_path)
    stacks.append(stack)
    stream = speech.stream(16000)
    with ThreadPoolExecutor(1) as pool:
        live = pool.submit(run_client, stack.uri, stream.path)  # real-time pace: about 20 s
        wait_until(lambda: segments_queued(stack.redis_url, POOL), 30, "the live session's first segment")
        stack.redis.stop()
        code, events, stderr = live.result(timeout=60)
    assert code == 1
    assert [e["code"] for e in events if e["type"] == "error"] == ["backend_unavailable"]
    assert "1013" in stderr
    stack.start_redis()  # same port, empty: no group, no keys
    restarted = time.monotonic()
    one = speech.stream(16000, (3,))

    def new_session_works() -> bool:
        code, events, _ = run_client(stack.uri, one.path, "--fast")
        return code == 0 and len(finals(events)) == 1

    wait_until(new_session_works, 10, "a new session after the restart", interval=0.5)
    print(f"new session served {time.monotonic() - restarted:.1f} s after Redis came back")
    assert stack.ingest.popen.poll() is None and stack.transcribers[0].popen.poll() is None


def test_sigterm_ingest_drains_live_sessions_then_exits_0(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(tmp_path, ingest_flags=("--drain-timeout", "20"))
    stacks.append(stack)
    stream = speech.stream(16000, (3,))  # about 5 s at real-time pace
    with ThreadPoolExecutor(1) as pool:
        live = pool.submit(run_client, stack.uri, stream.path)
        wait_until(lambda: open_sessions(stack.redis_url), 20, "the session to open")
        stack.ingest.popen.send_signal(signal.SIGTERM)
        code, events, stderr = live.result(timeout=60)
    assert code == 0, stderr  # the live session finished normally
    assert_exactly_once_in_order(events, stream.texts)
    assert stack.ingest.popen.wait(30) == 0
    assert "draining 1 live session" in stack.ingest.log


def test_drain_timeout_closes_what_is_left_with_1001(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(tmp_path, ingest_flags=("--drain-timeout", "1"))
    stacks.append(stack)
    stream = speech.stream(16000)  # about 20 s at real-time pace
    with ThreadPoolExecutor(1) as pool:
        live = pool.submit(run_client, stack.uri, stream.path)
        wait_until(lambda: open_sessions(stack.redis_url), 20, "the session to open")
        stack.ingest.popen.send_signal(signal.SIGTERM)
        code, _, stderr = live.result(timeout=60)
    assert code == 1 and "1001" in stderr
    assert stack.ingest.popen.wait(30) == 0


def test_sigterm_transcriber_finishes_its_batch_and_exits_0(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(tmp_path)
    stacks.append(stack)
    transcriber = stack.transcribers[0]
    stream = speech.stream(16000, (2,))
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_client, stack.uri, stream.path, "--fast")
        wait_until(lambda: any(pending_of(stack).values()), 30, "a segment in flight", interval=0.01)
        transcriber.popen.send_signal(signal.SIGTERM)
        code, events, stderr = run.result(timeout=60)
    assert code == 0, stderr
    assert_exactly_once_in_order(events, stream.texts)  # the batch in hand was finished and published
    assert transcriber.popen.wait(30) == 0
    assert pending_of(stack) == {} or not any(pending_of(stack).values())


def test_no_transcriber_is_told_at_the_handshake_and_a_dead_one_times_out(
    stacks: list[Stack], speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(tmp_path, transcribers=0, ingest_flags=("--result-timeout", "3"))
    stacks.append(stack)
    one = speech.stream(16000, (1,))
    code, events, stderr = run_client(stack.uri, one.path, "--fast")
    assert code == 1 and "1013" in stderr
    assert [e["code"] for e in events if e["type"] == "error"] == ["no_transcriber"]
    # A transcriber that comes and then dies: the session is told within --result-timeout.
    stack.start_base_transcriber()
    wait_until(lambda: alive(stack.redis_url, POOL), 120, "the transcriber")
    stack.transcribers[0].popen.send_signal(signal.SIGKILL)
    started = time.monotonic()
    code, events, stderr = run_client(stack.uri, one.path, "--fast")
    assert code == 0, stderr
    assert [(e["code"], e.get("segment")) for e in events if e["type"] == "error"] == [("timeout", 0)]
    assert events[-1] == {"type": "done"}
    assert time.monotonic() - started < 15


def test_results_for_a_client_that_left_are_dropped_without_piling_up(
    base_stack: Stack, speech: Speech
) -> None:
    from websockets.sync.client import connect

    stream = speech.stream(16000, (0, 1, 2))
    with connect(base_stack.uri) as ws:
        session = json.loads(ws.recv(timeout=10))["session"]
        for i in range(0, len(stream.pcm), 32000):
            ws.send(stream.pcm[i : i + 32000])
        ws.send(json.dumps({"type": "eof"}))
        # ...and leaves at once, before any transcript arrives.
    channel = keys.result_channel(session)
    with redis.Redis.from_url(base_stack.redis_url) as client:
        # The ingest lets go of the session at once (no one waits for its results)...
        wait_until(lambda: client.pubsub_numsub(channel) == [(channel.encode(), 0)], 10, "the unsubscribe")
        # ...and what it had queued is skipped or answered into the void, then deleted.
        segments = keys.segment_stream(POOL)
        wait_until(
            lambda: client.xlen(segments) == 0 and not any(pending_of(base_stack).values()),
            60,
            "the stream to drain",
        )
        assert client.pubsub_channels(keys.result_channel("*")) == []


def test_after_a_redis_restart_the_first_command_on_a_pooled_connection_succeeds(tmp_path: Path) -> None:
    """Found by the Compose test (tests/test_compose.py): after Redis restarted, the ingest's first
    admission check ran on a pooled connection Redis had closed and the session got 503, though
    Redis was back. Such a command is sent again on a new connection."""

    async def scenario(stack: Stack) -> int:
        client = await connect_redis(stack.redis_url, asyncio.Event())
        try:
            await client.xadd("probe", {"n": "1"})
            stack.redis.stop()
            await asyncio.to_thread(stack.start_redis)  # the same port, empty
            return int(await client.xlen("probe"))
        finally:
            await client.aclose()

    stack = Stack(tmp_path)
    try:
        assert asyncio.run(scenario(stack)) == 0
    finally:
        stack.stop()
