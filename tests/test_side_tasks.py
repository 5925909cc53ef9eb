"""The tasks beside the sessions (result subscriber, certificate watcher, webhook sender) cannot take
the ingest down, and its health check tells the truth about the one it cannot serve without."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
import uuid
from http import HTTPStatus
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from services.lifecycle import supervise
from services.stack import POOL, Stack, counter, free_port, start_ingest, wait_until
from tests.helpers import finals, run_client
from tests.platforms import call_frames, encode
from tests.test_calls import send_call, with_call_id
from tools.speech import Speech


def test_a_failing_side_task_is_counted_restarted_and_its_siblings_go_on() -> None:
    restarts = Counter("restarts", "", ["task"], registry=CollectorRegistry())
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ConnectionResetError("the far side hung up")  # anything, not only what is expected
        await asyncio.Event().wait()

    async def scenario() -> int:
        ticks = 0
        async with asyncio.TaskGroup() as tasks:
            side = tasks.create_task(supervise("flaky", flaky, restarts))
            while len(runs) < 3:
                await asyncio.sleep(0.05)
                ticks += 1  # the sibling (a session) keeps running meanwhile
            side.cancel()
        return ticks

    assert asyncio.run(scenario()) > 0
    assert restarts.labels("flaky")._value.get() == 2


class Garbage(threading.Thread):
    """A webhook receiver that answers every request with a line that is no HTTP status."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                self.requests += 1
                conn.sendall(b"garbage\r\n")


def test_a_webhook_receiver_that_answers_garbage_cannot_end_the_ingest(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    receiver = Garbage()
    metrics = free_port()
    flags = ("--webhook-url", f"http://127.0.0.1:{receiver.port}/hook", "--webhook-secret", "shh")
    uri, ingest = start_ingest(
        base_stack.redis_url, POOL, *flags, "--metrics-port", str(metrics), logs=tmp_path
    )

    def answered() -> bool:
        """The garbage was met: the delivery given up, or the sender restarted, or the ingest gone."""
        if ingest.exited:
            return True
        failed = counter(metrics, "stt_webhook_deliveries_total", outcome="failed")
        return failed + counter(metrics, "stt_task_restarts_total", task="webhook") > 0

    try:
        stream = speech.stream(8000, (1,))
        start = with_call_id("twilio", f"CA{uuid.uuid4().hex}")
        frames = call_frames("twilio", {"inbound": encode(stream.path, "mulaw", 8000)}, 160, start=start)
        assert send_call(f"{uri}/twilio", frames)[0] == 1000
        wait_until(answered, 90, "the webhook to meet the garbage")
        assert not ingest.exited, ingest.log[-3000:]
        one = speech.stream(16000, (3,))
        code, events, stderr = run_client(uri, one.path, "--fast")
        assert code == 0 and len(finals(events)) == 1, stderr
    finally:
        ingest.stop()
        receiver.listener.close()


def _health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def test_healthz_is_unavailable_while_the_result_subscriber_has_lost_redis(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    try:
        port = free_port()
        stack.start_ingest(POOL, port=port)
        assert _health(port) == HTTPStatus.OK
        stack.redis.stop()
        wait_until(lambda: _health(port) == HTTPStatus.SERVICE_UNAVAILABLE, 15, "/healthz to say 503")
        stack.start_redis()  # the same port: the subscriber reconnects
        wait_until(lambda: _health(port) == HTTPStatus.OK, 15, "/healthz to recover")
    finally:
        stack.stop()
