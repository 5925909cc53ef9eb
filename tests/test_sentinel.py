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
from services.stack import POOL, Proc, Stack, free_port, port_open, wait_until
from tests.helpers import finals, run_client
from tools.speech import Speech

SERVICE = "stt"


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


class Topology:
    """redis-server primary + two replicas + three Sentinels watching them, on free ports."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.primary_port = free_port()
        self.procs: dict[str, Proc] = {}
        self.servers = {"primary": self.primary_port, "replica-1": free_port(), "replica-2": free_port()}
        for name, port in self.servers.items():
            args = [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            if name != "primary":
                args += ["--replicaof", "127.0.0.1", str(self.primary_port)]
            self.procs[name] = Proc(name, args, workdir / f"{name}.log")
        self.sentinel_ports = [free_port() for _ in range(3)]
        for n, port in enumerate(self.sentinel_ports):
            conf = workdir / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
            self.procs[f"sentinel-{n}"] = Proc(
                f"sentinel-{n}", ["redis-server", str(conf), "--sentinel"], workdir / f"sentinel-{n}.log"
            )
        wait_until(
            lambda: all(port_open(p) for p in [*self.servers.values(), *self.sentinel_ports]),
            20,
            "Redis and Sentinels",
        )
        wait_until(lambda: self.replicas_known() == 2, 30, "the Sentinels to see both replicas")
        self.url = (
            "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}/0"
        )

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0])

    def replicas_known(self) -> int:
        with self.sentinel() as client:
            return len(client.sentinel_slaves(SERVICE))

    def primary(self) -> int:
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(signal.SIGKILL)


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
