"""One Redis pub/sub connection per ingest, fanned out to sessions.

Each session subscribes to its own channel (``keys.result_channel``) and waits
for Redis to confirm the subscription before it enqueues its first segment, so
no result can be published before anyone listens. Messages land in the
session's bounded queue; after the session ends its channel is unsubscribed and
late results are dropped by Redis itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as redis

from services import keys

log = logging.getLogger("ingest.results")

# A session never has more results in flight than segments it enqueued; this only
# guards against a runaway publisher.
QUEUE_LIMIT = 1024


class SubscriptionError(Exception):
    """Redis did not confirm a subscription in time."""


class ResultRouter:
    def __init__(self, client: redis.Redis, ingest_id: str, confirm_timeout: float = 5.0) -> None:
        self._pubsub = client.pubsub()
        self._control = keys.control_channel(ingest_id)
        self._confirm_timeout = confirm_timeout
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}

    async def run(self) -> None:
        """Read the shared connection until cancelled."""
        # A standing subscription keeps the connection open while no session is live.
        await self._pubsub.subscribe(self._control)
        try:
            while True:
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
        finally:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message["channel"]
        assert isinstance(channel, bytes)
        if message["type"] == "subscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
        elif message["type"] == "message":
            queue = self._queues.get(channel)
            data = message["data"]
            if queue is None or not isinstance(data, bytes):
                return
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                log.error("result queue full on %s; result dropped", channel.decode())

    @asynccontextmanager
    async def subscription(self, session: str) -> AsyncIterator[asyncio.Queue[bytes]]:
        """Subscribe to ``session``'s channel; yield its queue once Redis confirmed."""
        channel = keys.result_channel(session).encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        confirmed = asyncio.Event()
        self._queues[channel] = queue
        self._confirmed[channel] = confirmed
        try:
            await self._pubsub.subscribe(channel)
            try:
                await asyncio.wait_for(confirmed.wait(), self._confirm_timeout)
            except TimeoutError:
                raise SubscriptionError(f"Redis did not confirm the subscription to {channel!r}") from None
            yield queue
        finally:
            del self._queues[channel], self._confirmed[channel]
            await self._pubsub.unsubscribe(channel)
