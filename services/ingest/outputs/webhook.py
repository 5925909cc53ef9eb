"""Telephony finals pushed to a webhook (``--webhook-url``): one POST of JSON per final.

The body is ``{"delivery": <uuid>, "call": <call id>, "event": <the final as the call's event
stream keeps it>}``. Headers: ``X-STT-Delivery: <uuid>``, the same as in the body and the same
on every retry of one final, so a receiver can de-duplicate; ``X-STT-Timestamp`` (Unix seconds
of this attempt) and ``X-STT-Signature: sha256=<hex>``, the HMAC-SHA256 of
``<X-STT-Timestamp>.<body>`` keyed by ``--webhook-secret``.

A receiver rejects a timestamp more than REPLAY_WINDOW_S (5 minutes) away from its clock (a
replay), compares the signature in constant time, and keeps the delivery ids it has seen for
that window (a retry it already handled gets a 2xx and nothing else)::

    import hashlib, hmac, time

    def genuine(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
        timestamp = headers["x-stt-timestamp"]
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            return False  # stale: a replay, or a clock far off
        signed = timestamp.encode() + b"." + body
        expected = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(headers["x-stt-signature"], expected)

Delivery: CONCURRENCY senders, each on its own persistent HTTP(S) connection (opened again after
a failure), the blocking exchange on a thread of the webhook's own pool. The finals of one call
go one at a time, in order; different calls go side by side. An attempt that fails in any way —
no connection, no answer within TIMEOUT_S, a non-2xx answer, an answer http.client cannot parse
— is retried with backoff (FIRST_BACKOFF_S, doubling), ATTEMPTS times in all; then it is given
up (counted ``failed``, logged once). The receiver is outside: nothing it does ends ``run()``.

Bounded: at most QUEUE_LIMIT finals wait; when more come the oldest waiting one is dropped. At
shutdown ``drain(DRAIN_S)`` delivers what waits for that long, then drops what is left. Every
submitted final is counted once: ``delivered``, ``failed`` or ``dropped``. The call's event
stream in Redis keeps every final either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from services.metrics import IngestMetrics

log = logging.getLogger("ingest.webhook")

QUEUE_LIMIT = 1000
CONCURRENCY = 8
ATTEMPTS = 4
FIRST_BACKOFF_S = 0.5
TIMEOUT_S = 5.0  # one attempt, connecting included
ANSWER_LIMIT = 64 * 1024  # a longer answer body is not read: the connection is closed instead
DRAIN_S = 10.0  # what the ingest gives drain() at shutdown, after the sessions
REPLAY_WINDOW_S = 300  # what receivers are told to accept (see above); not enforced here


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def parse_url(url: str) -> SplitResult:
    """``url`` split, or ValueError with one line on what is wrong with it."""
    target = urlsplit(url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise ValueError(f"webhook URL must be http(s)://host[:port]/path, not {url!r}")
    _ = target.port  # raises ValueError on a bad one
    return target


class Refused(Exception):
    """The receiver answered, but not with a 2xx."""


@dataclass(eq=False)
class Delivery:
    id: str
    call: str
    body: bytes
    settled: bool = False  # counted (delivered, failed or dropped)


class Connection:
    """One persistent HTTP(S) connection; blocking, used by one thread at a time."""

    def __init__(self, target: SplitResult) -> None:
        self.target = target
        host, port = target.hostname or "", target.port
        self.http: http.client.HTTPConnection
        if target.scheme == "https":
            context = ssl.create_default_context()
            self.http = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=context)
        else:
            self.http = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        self.busy = False  # an exchange is under way (on a thread)
        self.aborted = False

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; return the answer's status. Raises whatever the exchange raises."""
        self.busy = True
        try:
            if self.aborted:
                raise ConnectionAbortedError("the webhook is shutting down")
            reused = self.http.sock is not None
            try:
                return self._exchange(path, body, headers)
            except ConnectionError:
                self.http.close()
                if not reused or self.aborted:
                    raise
            except BaseException:
                self.http.close()
                raise
            # The receiver had closed the idle connection: once more, on a new one.
            try:
                return self._exchange(path, body, headers)
            except BaseException:
                self.http.close()
                raise
        finally:
            self.busy = False
            if self.aborted:
                self.http.close()

    def _exchange(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        self.http.request("POST", path, body, headers)
        answer = self.http.getresponse()
        if answer.length is not None and answer.length <= ANSWER_LIMIT:
            answer.read()  # all of it (a short one raises IncompleteRead): the connection is reusable
        else:
            answer.close()  # of unknown or large length: not read, and the connection not reused
            self.http.close()
        return answer.status

    def abort(self) -> None:
        """From another thread: cut off an exchange under way (its thread then gets an error and
        closes the connection) or close the idle connection; it is not used again."""
        self.aborted = True
        sock = self.http.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # under TLS too, the plain socket's
        if not self.busy:
            self.http.close()


class Sender:
    """One sender's connection, used from the event loop: an attempt at most TIMEOUT_S."""

    def __init__(self, target: SplitResult, executor: ThreadPoolExecutor) -> None:
        self.connection = Connection(target)
        self.executor = executor

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        connection = self.connection
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, connection.post, path, body, headers)
        future.add_done_callback(_retrieve)
        try:
            await asyncio.wait([future], timeout=TIMEOUT_S)
        finally:
            if not future.done():  # timed out or cancelled: cut it off, go on on a new connection
                connection.abort()
                self.connection = Connection(connection.target)
        if not future.done():
            raise TimeoutError(f"no answer within {TIMEOUT_S:g} s")
        status = future.result()
        if not 200 <= status < 300:
            raise Refused(f"answered {status}")


def _retrieve(future: asyncio.Future[int]) -> None:
    """Mark the outcome of an exchange that was cut off as seen (it is no one's concern now)."""
    if not future.cancelled():
        future.exception()


class Webhook:
    def __init__(self, url: str, secret: str, metrics: IngestMetrics) -> None:
        self.url = url
        self.target = parse_url(url)
        self.path = (self.target.path or "/") + (f"?{self.target.query}" if self.target.query else "")
        self.secret = secret
        self.metrics = metrics
        self._waiting: deque[Delivery] = deque()
        self._sending: dict[str, Delivery] = {}  # by call: one at a time per call
        self._senders: list[Sender] = []
        self._changed = asyncio.Event()  # something was queued, sent or given up
        self._closed = False  # drained: nothing more is sent
        self._overflowing = False

    def submit(self, call: str, event: str) -> None:
        """Queue one final (``event``: its JSON) of ``call`` for delivery."""
        delivery_id = str(uuid.uuid4())
        body = {"delivery": delivery_id, "call": call, "event": json.loads(event)}
        delivery = Delivery(delivery_id, call, json.dumps(body, ensure_ascii=False).encode())
        if self._closed:
            self._settle(delivery, "dropped")
            return
        if len(self._waiting) >= QUEUE_LIMIT:
            if not self._overflowing:
                log.warning("webhook: %d finals waiting; dropping the oldest", QUEUE_LIMIT)
                self._overflowing = True
            self._settle(self._waiting.popleft(), "dropped")
        self._waiting.append(delivery)
        self._changed.set()

    async def run(self) -> None:
        """Deliver until cancelled. A final cut off by the cancellation waits again, first."""
        # Twice the senders: a thread whose exchange was cut off may still be ending.
        executor = ThreadPoolExecutor(2 * CONCURRENCY, thread_name_prefix="webhook")
        self._senders = [Sender(self.target, executor) for _ in range(CONCURRENCY)]
        try:
            async with asyncio.TaskGroup() as senders:
                for sender in self._senders:
                    senders.create_task(self._send(sender))
        finally:
            for sender in self._senders:
                sender.connection.abort()
            executor.shutdown(wait=False, cancel_futures=True)  # no waiting on the event loop

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: deliver (retries included) what waits for up to ``timeout_s``, then drop what
        is left and cut off the exchanges under way. Finals submitted later are dropped."""
        if self._waiting or self._sending:
            waiting = len(self._waiting) + len(self._sending)
            log.info("webhook: delivering %d final(s) for up to %.1f s", waiting, timeout_s)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._waiting or self._sending:
                    self._changed.clear()
                    await self._changed.wait()
        self._closed = True
        left = [*self._waiting, *self._sending.values()]
        self._waiting.clear()
        for delivery in left:
            self._settle(delivery, "dropped")
        for sender in self._senders:
            sender.connection.abort()
        if left:
            log.warning("webhook: %d final(s) not delivered within %.1f s: dropped", len(left), timeout_s)

    async def _send(self, sender: Sender) -> None:
        while True:
            delivery = await self._next()
            try:
                await self._deliver(sender, delivery)
            finally:
                del self._sending[delivery.call]
                if not delivery.settled and not self._closed:  # cancelled: for the next run()
                    self._waiting.appendleft(delivery)
                self._changed.set()

    async def _next(self) -> Delivery:
        """The oldest waiting final of a call with none under way (n <= QUEUE_LIMIT to look at)."""
        while True:
            for delivery in self._waiting:
                if delivery.call not in self._sending:
                    self._waiting.remove(delivery)
                    self._sending[delivery.call] = delivery
                    self._overflowing = self._overflowing and len(self._waiting) > QUEUE_LIMIT // 2
                    return delivery
            self._changed.clear()
            await self._changed.wait()

    async def _deliver(self, sender: Sender, delivery: Delivery) -> None:
        delay = FIRST_BACKOFF_S
        for attempt in range(1, ATTEMPTS + 1):
            if self._closed:  # drained during the backoff: already counted as dropped
                return
            try:
                await sender.post(self.path, delivery.body, self._headers(delivery))
            # The receiver is outside: whatever it causes is one failed attempt, never the end of run().
            except Exception as exc:
                if self._closed:  # drained meanwhile: already counted as dropped
                    return
                if attempt == ATTEMPTS:
                    log.warning(
                        "webhook %s: call %s delivery %s given up after %d attempts: %s",
                        self.url, delivery.call, delivery.id, attempt, _describe(exc),
                    )  # fmt: skip
                    self._settle(delivery, "failed")
                    return
                log.debug("webhook: delivery %s attempt %d failed: %s", delivery.id, attempt, _describe(exc))
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self._settle(delivery, "delivered")
                return

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        timestamp = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "X-STT-Delivery": delivery.id,
            "X-STT-Timestamp": timestamp,
            "X-STT-Signature": sign(self.secret, timestamp, delivery.body),
        }

    def _settle(self, delivery: Delivery, outcome: str) -> None:
        if not delivery.settled:
            delivery.settled = True
            self.metrics.webhook_deliveries.labels(outcome).inc()


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
