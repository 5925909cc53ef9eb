"""Telephony finals pushed to a webhook (``--webhook-url``): one POST of JSON per final.

The body is ``{"call": <call id>, "event": <the final as the call's event stream keeps it>}``;
``X-STT-Signature: sha256=<hex>`` is the HMAC-SHA256 of ``<X-STT-Timestamp>.<body>`` keyed by
``--webhook-secret``, so the receiver can check it came from us and is fresh. A POST that fails
(a connection error or a non-2xx answer) is retried with backoff, ATTEMPTS times in all; then
it is given up (counted, and logged). Bounded: at most QUEUE_LIMIT finals wait; when more come
the oldest waiting one is dropped (counted) — the call's event stream in Redis still has it.
One sender per ingest, in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections import deque
from http import HTTPStatus

from services.metrics import IngestMetrics

log = logging.getLogger("ingest.webhook")

QUEUE_LIMIT = 1000
ATTEMPTS = 4
FIRST_BACKOFF_S = 0.5
TIMEOUT_S = 5.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


class Webhook:
    def __init__(self, url: str, secret: str, metrics: IngestMetrics) -> None:
        self.url = url
        self.secret = secret
        self.metrics = metrics
        self._waiting: deque[bytes] = deque()
        self._ready = asyncio.Event()

    def submit(self, call: str, event: str) -> None:
        """Queue one final (``event``: its JSON) of ``call`` for delivery."""
        if len(self._waiting) >= QUEUE_LIMIT:
            self._waiting.popleft()
            self.metrics.webhook_deliveries.labels("dropped").inc()
        body = json.dumps({"call": call, "event": json.loads(event)}, ensure_ascii=False).encode()
        self._waiting.append(body)
        self._ready.set()

    async def run(self) -> None:
        """Deliver, in order, until cancelled."""
        while True:
            await self._ready.wait()
            while self._waiting:
                await self._deliver(self._waiting.popleft())
            self._ready.clear()

    async def _deliver(self, body: bytes) -> None:
        delay = FIRST_BACKOFF_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await asyncio.to_thread(self._post, body)
            except (OSError, ValueError) as exc:
                if attempt == ATTEMPTS:
                    log.error("webhook %s: gave up after %d attempts: %s", self.url, attempt, exc)
                    self.metrics.webhook_deliveries.labels("failed").inc()
                    return
                log.warning("webhook: attempt %d failed (%s); again in %.1f s", attempt, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.metrics.webhook_deliveries.labels("delivered").inc()
                return

    def _post(self, body: bytes) -> None:
        timestamp = str(int(time.time()))
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-STT-Timestamp": timestamp,
                "X-STT-Signature": sign(self.secret, timestamp, body),
            },
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            if not HTTPStatus.OK <= answer.status < HTTPStatus.MULTIPLE_CHOICES:
                raise ValueError(f"answered {answer.status}")
