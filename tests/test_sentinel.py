"""Redis Sentinel (issue 11, part 2): a primary, two replicas and three Sentinels on loopback
(real redis-server processes, ``--sentinel`` mode); both services find the primary through them,
and when it is SIGKILLed mid-session a new session is served within seconds while every live one
either completes with each segment once or ends with backend_unavailable (1013)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from services.redis_url import parse_sentinel
from services.stack import POOL, Stack, wait_until
from tests.helpers import finals, run_client
from tools.sentinels import Topology
from tools.speech import Speech


def test_sentinel_urls_are_parsed_or_refused() -> None:
    url = parse_sentinel("redis+sentinel://:s%40cret@10.0.0.1:26379,sentinel-2:26380/stt/2")
    assert url is not None
    assert (url.hosts, url.service, url.db, url.password) == (
        (("10.0.0.1", 26379), ("sentinel-2", 26380)),
        "stt",
        2,
        "s@cret",
    )
    assert parse_sentinel("redis://localhost:6379/0") is None
    for bad in ("redis+sentinel://host/stt", "redis+sentinel://host:1/", "redis+sentinel://host:1/stt/x"):
        with pytest.raises(ValueError):
            parse_sentinel(bad)


def test_a_primary_killed_mid_session_fails_over_and_nothing_is_lost_silently(
    tmp_path: Path, speech: Speech
) -> None:
    topology = Topology(tmp_path)
    stack = Stack(tmp_path, redis_url=topology.url)
    try:
        stack.start_base_transcriber()
        stack.start_ingest(POOL)
        wait_until(
            lambda: redis.Redis(port=topology.primary_port).exists(f"stt:alive:{POOL}"), 180, "a transcriber"
        )
        long = speech.stream(16000, (0, 1, 2, 3, 4))  # about 20 s at real-time pace
        live: list[Any] = []
        talkers = [
            threading.Thread(target=lambda: live.append(run_client(stack.uri, long.path))) for _ in range(2)
        ]
        for talker in talkers:
            talker.start()
        time.sleep(6)
        topology.procs["primary"].popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        short = speech.stream(16000, (1,))
        served = None
        while served is None and time.monotonic() - killed < 30:
            code, events, _ = run_client(stack.uri, short.path, "--fast", timeout=60)
            if code == 0 and finals(events):
                served = time.monotonic() - killed
        for talker in talkers:
            talker.join(120)
        new_primary = topology.primary()
    finally:
        stack.stop()
        topology.stop()
    moved = f"the primary moved from port {topology.primary_port} to {new_primary}"
    print(f"failover: {moved}; a new session was served {served} s after the kill")
    assert new_primary != topology.primary_port
    assert served is not None and served < 10
    for code, events, stderr in live:
        errors = [e for e in events if e["type"] == "error"]
        if code == 0:
            segments = [f["segment"] for f in finals(events)]
            assert segments == sorted(set(segments)), segments  # each segment once, in order
            assert not [e for e in errors if e["code"] != "timeout"], errors
        else:
            assert [e["code"] for e in errors][-1:] == ["backend_unavailable"], (events, stderr)
    print("live sessions:", [(code, len(finals(events))) for code, events, _ in live])
