"""The webhook sender against real receivers: HTTP/1.1 servers on 127.0.0.1 port 0 that answer
well, slowly, badly, or never. No mocks; only the backoff is shortened."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.ingest.outputs import webhook
from services.ingest.outputs.webhook import Webhook
from services.metrics import IngestMetrics

SECRET = "shh"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REFUSED = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
BAD_ANSWERS = {
    "garbage": b"garbage\r\n",  # http.client.BadStatusLine
    "overlong status line": b"HTTP/1.1 200 " + b"x" * 70_000 + b"\r\n\r\n",  # LineTooLong
    "truncated body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # IncompleteRead
}


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Request], Awaitable[tuple[bytes, bool]]]  # -> (bytes to send, close after)


class Receiver:
    """A real HTTP/1.1 server (keep-alive) that keeps every request and counts connections."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[Request] = []
        self.connections = 0
        self.closing = asyncio.Event()
        self.url = ""

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?v=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closing.set()
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not self.closing.is_set():
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                assert head.startswith("POST /hook?v=1 HTTP/1.1\r\n")
                fields = (line.split(":", 1) for line in head.split("\r\n")[1:] if line)
                headers = {name.lower(): value.strip() for name, value in fields}
                request = Request(headers, await reader.readexactly(int(headers["content-length"])))
                self.requests.append(request)
                reply, close = await self.answer(request)
                writer.write(reply)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender closed (or cut off) the connection
        finally:
            writer.close()

    async def hang(self, request: Request) -> tuple[bytes, bool]:
        """Never answer (until the receiver closes)."""
        await self.closing.wait()
        return b"", True


async def ok(request: Request) -> tuple[bytes, bool]:
    return OK, False


def final(n: int) -> str:
    return json.dumps({"type": "final", "text": f"final {n}", "segment": n, "start": n, "end": n + 1.0})


class Counts:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __getitem__(self, outcome: str) -> float:
        value = self.registry.get_sample_value("stt_webhook_deliveries_total", {"outcome": outcome})
        return value or 0.0


@contextlib.asynccontextmanager
async def running(url: str) -> AsyncIterator[tuple[Webhook, asyncio.Task[None], Counts]]:
    """A Webhook to ``url`` with its run() task, cancelled at the end."""
    registry = CollectorRegistry()
    hook = Webhook(url, SECRET, IngestMetrics(registry))
    task = asyncio.create_task(hook.run())
    try:
        yield hook, task, Counts(registry)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], within_s: float, what: str, task: asyncio.Task[None]) -> None:
    """Poll ``condition`` for up to ``within_s``; fail at once if the webhook's run() has ended."""
    deadline = time.monotonic() + within_s
    while not condition():
        if task.done():
            task.result()  # raises what ended it
            raise AssertionError(f"run() returned while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {within_s} s")
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "FIRST_BACKOFF_S", 0.01)


@pytest.mark.parametrize("bad", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_bad_answer_is_retried_given_up_and_the_webhook_goes_on(bad: bytes) -> None:
    async def answer(request: Request) -> tuple[bytes, bool]:
        return (bad, True) if request.json["call"] == "bad" else (OK, False)

    async def go() -> None:
        async with Receiver(answer) as receiver, running(receiver.url) as (hook, task, counts):
            hook.submit("bad", final(0))
            await until(lambda: counts["failed"] == 1, 5, "give-up", task)
            assert [r.json["call"] for r in receiver.requests] == ["bad"] * webhook.ATTEMPTS
            hook.submit("good", final(1))
            await until(lambda: counts["delivered"] == 1, 5, "delivery to a good receiver", task)
            assert not task.done()
            assert counts["failed"] == 1 and counts["dropped"] == 0

    asyncio.run(go())


def test_a_slow_receiver_is_served_concurrently_on_reused_connections() -> None:
    finals, answer_s = 200, 0.2
    serial_s = finals * answer_s  # what one sender, one POST at a time, needs at the least

    async def slow(request: Request) -> tuple[bytes, bool]:
        await asyncio.sleep(answer_s)
        return OK, False

    async def go() -> None:
        async with Receiver(slow) as receiver, running(receiver.url) as (hook, task, counts):
            for n in range(finals):
                hook.submit(f"CA{n}", final(n))
            await until(lambda: counts["delivered"] == finals, serial_s / 2, "200 deliveries", task)
            assert receiver.connections <= webhook.CONCURRENCY
            assert len({r.headers["x-stt-delivery"] for r in receiver.requests}) == finals

    asyncio.run(go())


def test_finals_of_one_call_arrive_in_order_while_calls_go_side_by_side() -> None:
    async def uneven(request: Request) -> tuple[bytes, bool]:
        await asyncio.sleep(0.002 * (request.json["event"]["segment"] % 7))
        return OK, False

    async def go() -> None:
        async with Receiver(uneven) as receiver, running(receiver.url) as (hook, task, counts):
            for n in range(60):
                hook.submit(f"CA{n % 3}", final(n))
            await until(lambda: counts["delivered"] == 60, 10, "60 deliveries", task)
            for call in range(3):
                kept = [r.json["event"] for r in receiver.requests if r.json["call"] == f"CA{call}"]
                assert [event["segment"] for event in kept] == list(range(call, 60, 3))

    asyncio.run(go())


def test_a_retry_carries_the_same_delivery_id_freshly_signed() -> None:
    answers = [REFUSED, OK]

    async def refuse_first(request: Request) -> tuple[bytes, bool]:
        return answers.pop(0), False

    async def go() -> None:
        async with Receiver(refuse_first) as receiver, running(receiver.url) as (hook, task, counts):
            hook.submit("CA1", final(0))
            await until(lambda: counts["delivered"] == 1, 5, "the delivery", task)
        first, retry = receiver.requests
        assert first.body == retry.body
        assert first.headers["x-stt-delivery"] == retry.headers["x-stt-delivery"] == retry.json["delivery"]
        for request in (first, retry):
            timestamp = request.headers["x-stt-timestamp"]
            assert abs(time.time() - int(timestamp)) < webhook.REPLAY_WINDOW_S
            signed = timestamp.encode() + b"." + request.body
            expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(request.headers["x-stt-signature"], expected)
        assert receiver.connections == 1  # the 500 left the connection open for the retry
        assert counts["failed"] == counts["dropped"] == 0

    asyncio.run(go())


def test_drain_delivers_what_waits_within_the_timeout() -> None:
    async def quick(request: Request) -> tuple[bytes, bool]:
        await asyncio.sleep(0.05)
        return OK, False

    async def go() -> None:
        async with Receiver(quick) as receiver, running(receiver.url) as (hook, task, counts):
            for n in range(40):
                hook.submit(f"CA{n % 20}", final(n))
            started = time.monotonic()
            await hook.drain(10)
            assert time.monotonic() - started < 5
            assert (counts["delivered"], counts["dropped"]) == (40, 0)
            assert len(receiver.requests) == 40 and not task.done()

    asyncio.run(go())


def test_drain_drops_and_counts_what_is_left_at_the_timeout() -> None:
    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            receiver = await stack.enter_async_context(Receiver(ok))
            receiver.answer = receiver.hang
            hook, task, counts = await stack.enter_async_context(running(receiver.url))
            for n in range(20):
                hook.submit(f"CA{n}", final(n))
            await until(lambda: len(receiver.requests) == webhook.CONCURRENCY, 5, "POSTs under way", task)
            started = time.monotonic()
            await hook.drain(0.5)
            assert time.monotonic() - started < 1.5
            assert (counts["delivered"], counts["failed"], counts["dropped"]) == (0, 0, 20)
            hook.submit("CA1", final(99))  # after the drain: dropped at once
            assert counts["dropped"] == 21
            await asyncio.sleep(0.1)  # the cut-off exchanges end without counting again
            assert (counts["delivered"], counts["failed"], counts["dropped"]) == (0, 0, 21)
            assert not task.done()

    asyncio.run(go())


def test_when_too_many_wait_the_oldest_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "QUEUE_LIMIT", 3)

    async def go() -> None:
        async with Receiver(ok) as receiver:
            registry = CollectorRegistry()
            hook, counts = Webhook(receiver.url, SECRET, IngestMetrics(registry)), Counts(registry)
            for n in range(5):
                hook.submit("CA1", final(n))
            assert counts["dropped"] == 2
            task = asyncio.create_task(hook.run())
            await until(lambda: counts["delivered"] == 3, 5, "the 3 kept", task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert [r.json["event"]["segment"] for r in receiver.requests] == [2, 3, 4]

    asyncio.run(go())
