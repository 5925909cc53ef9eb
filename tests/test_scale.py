"""Several ingests on one Redis (issue 11, part 3): two ingests and two transcribers; sessions
spread over both get only their own results, in order; SIGTERM drains one ingest while the other
keeps serving."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from services.stack import POOL, Stack, open_sessions, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech, wer


@pytest.fixture
def two_ingests(tmp_path: Path) -> Any:
    stack = Stack.base(tmp_path, transcribers=2, ingest_flags=("--drain-timeout", "60"))
    stack.wait_serving(POOL, count=2)
    stack.start_ingest(POOL, "--drain-timeout", "60")
    yield stack
    stack.stop()


def test_sessions_spread_over_two_ingests_each_get_only_their_own_text(
    two_ingests: Stack, speech: Speech
) -> None:
    uris = two_ingests.uris
    streams = [speech.stream(16000, which) for which in ((0,), (1,), (2,), (3,), (1, 3), (0, 2))]

    def session(n: int) -> tuple[int, list[dict[str, Any]], str]:
        return run_client(uris[n % 2], streams[n].path, "--fast")

    with ThreadPoolExecutor(len(streams)) as pool:
        results = list(pool.map(session, range(len(streams))))
    for (code, events, stderr), stream in zip(results, streams, strict=True):
        assert code == 0, stderr
        got = finals(events)
        assert [f["segment"] for f in got] == sorted(f["segment"] for f in got)
        assert wer(" ".join(stream.texts), " ".join(f["text"] for f in got)) < 0.3, (stream.texts, got)


def test_sigterm_drains_one_ingest_while_the_other_keeps_serving(two_ingests: Stack, speech: Speech) -> None:
    draining, serving = two_ingests.ingests
    uris = two_ingests.uris
    long = speech.stream(16000, (5,))  # about 11 s at real-time pace
    live: dict[str, Any] = {}
    talker = threading.Thread(target=lambda: live.update(result=run_client(uris[0], long.path)))
    talker.start()
    wait_until(lambda: open_sessions(two_ingests.redis_url) >= 1, 30, "the live session")
    draining.popen.send_signal(signal.SIGTERM)
    code, events, stderr = run_client(uris[1], speech.stream(16000, (1,)).path, "--fast")
    assert code == 0 and "breakfast" in " ".join(f["text"] for f in finals(events)).lower(), stderr
    talker.join(120)
    code, events, stderr = live["result"]
    assert code == 0, stderr  # the session on the draining ingest finished with its text
    assert wer(long.texts[0], " ".join(f["text"] for f in finals(events))) < 0.3
    assert draining.popen.wait(60) == 0 and serving.popen.poll() is None
