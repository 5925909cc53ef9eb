"""A pool the deployment declares (``--pools``) but that an autoscaler keeps at zero transcribers
(KEDA's ``minReplicas: 0``) accepts sessions and queues their segments, so that its backlog is
what starts the first transcriber; a session waits for one up to ``--pool-start-timeout``.
Defect 4: the old ingest refused such a session at once (no_transcriber), so nothing ever reached
the stream and nothing ever scaled up. Real processes and whisper-base; KEDA itself cannot run
here, so the test starts the transcriber the way KEDA would: once the stream has entries."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.stack import POOL, Stack, segments_queued, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech, wer


def test_a_session_of_a_pool_at_zero_is_queued_until_its_first_transcriber_comes(
    speech: Speech, tmp_path: Path
) -> None:
    stack = Stack.base(
        tmp_path, transcribers=0, ingest_flags=("--pools", POOL, "--pool-start-timeout", "180")
    )
    try:
        stream = speech.stream(16000, (1, 3))
        with ThreadPoolExecutor(1) as pool:
            session = pool.submit(run_client, stack.uri, stream.path, "--fast")
            wait_until(
                lambda: segments_queued(stack.redis_url, POOL) >= 2, 60, "segments queued with no transcriber"
            )
            stack.start_base_transcriber()  # what the autoscaler does on that backlog
            code, events, stderr = session.result(timeout=240)
    finally:
        stack.stop()
    assert code == 0, stderr
    got = finals(events)
    assert [f["segment"] for f in got] == [0, 1]
    assert wer(" ".join(stream.texts), " ".join(f["text"] for f in got)) < 0.3


def test_a_pool_that_never_comes_up_ends_its_sessions_clearly_in_time(speech: Speech, tmp_path: Path) -> None:
    stack = Stack.base(tmp_path, transcribers=0, ingest_flags=("--pools", POOL, "--pool-start-timeout", "3"))
    try:
        started = time.monotonic()
        code, events, stderr = run_client(stack.uri, speech.stream(16000, (1,)).path, "--fast")
        took = time.monotonic() - started
    finally:
        stack.stop()
    assert code == 1 and "1013" in stderr
    assert [e["code"] for e in events if e["type"] == "error"] == ["no_transcriber"]
    assert "came up within 3 s" in next(e["message"] for e in events if e["type"] == "error")
    assert took < 30
