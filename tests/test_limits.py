"""Hostile and excessive clients against a real ingest: each gets a clear error event and close
code (or HTTP status at the handshake) while a normal session on the same ingest carries on."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from services import keys
from services.lifecycle import REDIS_POOL_SIZE, connect_redis
from services.stack import POOL, Proc, Stack, start_ingest
from tests.helpers import finals, run_client
from tools.speech import Speech, wer


@pytest.fixture
def ingests(base_stack: Stack, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start extra ingests with their own flags, on the shared stack's Redis and transcriber."""
    started: list[Proc] = []

    def start(*flags: str) -> str:
        uri, proc = start_ingest(base_stack.redis_url, POOL, *flags)
        started.append(proc)
        return uri

    yield start
    for proc in started:
        proc.stop()


def events_until_close(
    ws: ClientConnection, timeout: float = 30
) -> tuple[list[dict[str, Any]], int | None, str]:
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        pass
    return events, ws.close_code, ws.close_reason or ""


def errors(events: list[dict[str, Any]]) -> list[str]:
    return [e["code"] for e in events if e["type"] == "error"]


def raw_websocket(port: int) -> socket.socket:
    """A WebSocket opened by hand, so the test controls exactly what is (not) read."""
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def masked_binary_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x82]) + (bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0xFE]))
    if len(payload) >= 126:
        header += struct.pack(">H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_hostile_clients_are_cut_off_and_a_normal_session_carries_on(
    ingests: Callable[..., str], speech: Speech
) -> None:
    uri = ingests(
        "--idle-timeout", "2", "--max-frame-bytes", "4000", "--ping-interval", "1", "--ping-timeout", "1"
    )
    port = int(uri.rsplit(":", 1)[1])
    normal_stream = speech.stream(16000, (1,))
    with ThreadPoolExecutor(1) as pool:
        normal = pool.submit(run_client, uri, normal_stream.path)  # real-time pace, about 6 s

        # Sends nothing: idle timeout.
        with connect(uri) as ws:
            started = time.monotonic()
            events, code, reason = events_until_close(ws)
        assert errors(events) == ["idle_timeout"] and code == 1008 and "no data" in reason
        assert time.monotonic() - started < 6

        # A frame over the limit: an error event; one over twice the limit: cut off by websockets.
        with connect(uri) as ws:
            ws.send(b"\x00" * 6000)
            events, code, _ = events_until_close(ws)
        assert errors(events) == ["frame_too_big"] and code == 1009
        with connect(uri, max_size=None) as ws:
            ws.send(b"\x00" * 9000)
            events, code, _ = events_until_close(ws)
        assert code == 1009

        # Never reads (not even pings): the keepalive closes it after ping interval + timeout.
        sock = raw_websocket(port)
        sock.settimeout(1)
        started = time.monotonic()
        frame = masked_binary_frame(b"\x00" * 640)
        with pytest.raises(OSError):  # broken pipe / reset once the server has closed
            while time.monotonic() - started < 15:
                sock.sendall(frame)
                time.sleep(0.02)
        sock.close()
        assert time.monotonic() - started < 15

        code, events, stderr = normal.result(timeout=60)
    assert code == 0, stderr
    assert wer(normal_stream.texts[0], " ".join(f["text"] for f in finals(events))) <= 0.35


def test_a_session_over_the_maximum_length_gets_its_text_then_an_error(
    ingests: Callable[..., str], speech: Speech
) -> None:
    uri = ingests("--max-session-s", "4")
    stream = speech.stream(16000, (1, 3))  # about 10 s of audio, sent as fast as possible
    code, events, stderr = run_client(uri, stream.path, "--fast")
    assert code == 1 and "1008" in stderr
    got = finals(events)
    assert len(got) == 1 and wer(stream.texts[0], got[0]["text"]) <= 0.35  # what was said before the limit
    assert errors(events) == ["session_too_long"]


def test_more_sessions_than_the_maximum_get_503(ingests: Callable[..., str]) -> None:
    uri = ingests("--max-sessions", "2")
    with connect(uri) as first, connect(uri) as second:
        assert json.loads(first.recv(timeout=10))["type"] == "ready"
        assert json.loads(second.recv(timeout=10))["type"] == "ready"
        with pytest.raises(InvalidStatus) as refused:
            connect(uri)
        response = refused.value.response
        assert response.status_code == 503
        assert b"server full" in response.body and response.headers["Retry-After"]
    with connect(uri) as third:  # room again once they left
        assert json.loads(third.recv(timeout=10))["type"] == "ready"


def test_an_unserved_default_model_falls_back_to_the_only_pool_served(
    ingests: Callable[..., str], base_stack: Stack
) -> None:
    """The services started by hand as the README shows, without --default-model: it just works."""
    uri = ingests("--default-model", "swift")
    with connect(uri) as ws:
        ready = json.loads(ws.recv(timeout=10))
        assert (ready["type"], ready["model"]) == ("ready", POOL)
    with connect(uri + "/?model=swift") as ws:  # asked for by name: not served, and said so
        events, code, _ = events_until_close(ws)
        assert errors(events) == ["unknown_model"] and code == 1008


def test_a_refusal_reaches_a_client_that_streams_without_reading(
    ingests: Callable[..., str], base_stack: Stack
) -> None:
    """A client that sends its audio as fast as it can and reads only afterwards: its frames are
    still unread on the server when the session is refused. The refusal (error event, then close
    code) must reach it: a socket closed with unread data in it is reset by the kernel, and what
    was sent before the reset is lost."""
    uri = ingests("--default-model", "swift")
    chunk = bytes(640)  # 20 ms of 16 kHz silence
    for _ in range(10):
        with connect(uri + "/?model=swift", max_queue=None) as ws:
            with contextlib.suppress(ConnectionClosed):  # closed while it sends: read what came
                for _ in range(400):
                    ws.send(chunk)
            events, code, reason = events_until_close(ws)
        assert errors(events) == ["unknown_model"] and code == 1008, (events, code, reason)


def test_a_backlog_over_the_threshold_gets_503(ingests: Callable[..., str], base_stack: Stack) -> None:
    uri = ingests("--max-backlog", "2")
    stream = keys.segment_stream("backlogged")
    with redis.Redis.from_url(base_stack.redis_url) as client:
        for _ in range(3):
            client.xadd(stream, {"junk": "x"})
        try:
            with pytest.raises(InvalidStatus) as refused:
                connect(uri + "/?model=backlogged")
            assert refused.value.response.status_code == 503
            assert b"3 segments are waiting" in refused.value.response.body
        finally:
            client.delete(stream)


def test_api_keys_and_allowed_origins(ingests: Callable[..., str]) -> None:
    uri = ingests("--api-keys", "key-one,key-two", "--allowed-origins", "https://good.example")
    for headers in [{}, {"Authorization": "Bearer wrong-key-123"}]:
        with pytest.raises(InvalidStatus) as refused:
            connect(uri, additional_headers=headers)
        assert refused.value.response.status_code == 401
        assert b"API key" in refused.value.response.body
    with connect(uri, additional_headers={"Authorization": "Bearer key-two"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    with connect(uri + "/?token=key-one") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    with pytest.raises(InvalidStatus) as refused:
        connect(uri + "/?token=key-one", origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    with connect(uri + "/?token=key-one", origin=Origin("https://good.example")) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"


def test_a_burst_of_redis_commands_waits_for_a_connection_instead_of_failing(base_stack: Stack) -> None:
    """Hundreds of sessions enqueueing at once: the services' Redis client (connect_redis) makes
    the extra commands wait for one of its REDIS_POOL_SIZE connections; redis-py's default pool
    raises "Too many connections" instead (checked, so this test is not vacuous)."""

    async def burst(client: aioredis.Redis) -> list[Any]:
        # Each BLPOP holds its connection for 50 ms: 300 of them need 300 at once.
        return await asyncio.gather(*(client.blpop(["stt:test:nothing"], timeout=0.05) for _ in range(300)))

    async def run() -> tuple[list[Any], int]:
        client = await connect_redis(base_stack.redis_url, asyncio.Event())
        try:
            replies = await burst(client)
            connections = len(await client.client_list())
        finally:
            await client.aclose()
        default = aioredis.Redis.from_url(base_stack.redis_url)
        try:
            with pytest.raises(redis.ConnectionError, match="Too many connections"):
                await burst(default)
        finally:
            await default.aclose()
        return replies, connections

    replies, connections = asyncio.run(run())
    assert replies == [None] * 300
    assert connections <= REDIS_POOL_SIZE + 10  # the pool's own, plus the stack's services
