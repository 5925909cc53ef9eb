"""One Redis pub/sub connection per ingest, fanned out to sessions.

Each session subscribes to its own channel (``keys.result_channel``) and waits
for Redis to confirm the subscription before it enqueues its first segment, so
no result can be published before anyone listens. Messages land in the
session's bounded queue; after the session ends its channel is unsubscribed and
late results are dropped by Redis itself.

If the connection breaks, results published meanwhile are lost, so every live
session is told (``LOST``) and the router reconnects with backoff for new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services import keys
from services.lifecycle import Backoff
from services.redis_url import client as redis_url_client

log = logging.getLogger("ingest.results")

# A session never has more results in flight than segments it enqueued; this only
# guards against a runaway publisher.
QUEUE_LIMIT = 1024
WAKE = b""  # put on a session's queue to make its relay look at its state
LOST = b"\x00lost"  # put on every session's queue when the subscriber connection broke


class SubscriptionError(redis.ConnectionError):
    """Redis did not confirm a subscription in time."""


class ResultRouter:
    def __init__(self, redis_url: str, ingest_id: str, confirm_timeout: float = 5.0) -> None:
        # No silent retries: a reconnect must be seen, since messages in the gap are lost.
        self._client = redis_url_client(redis_url, retry=Retry(NoBackoff(), 0))
        self._pubsub: redis.client.PubSub | None = None
        self._control = keys.control_channel(ingest_id)
        self._confirm_timeout = confirm_timeout
        self._queues: dict[bytes, asyncio.Queue[bytes]] = {}
        self._confirmed: dict[bytes, asyncio.Event] = {}
        self.connected = asyncio.Event()  # set while the subscriber connection is up
        self._stop = asyncio.Event()  # never set: the router runs until cancelled

    async def run(self) -> None:
        """Read the shared connection until cancelled, reconnecting when it breaks."""
        backoff = Backoff()
        try:
            while True:
                pubsub = self._client.pubsub()
                try:
                    # A standing subscription keeps the connection open while no session is live.
                    await pubsub.subscribe(self._control)
                    self._pubsub = pubsub
                    self.connected.set()
                    backoff.reset()
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._dispatch(message)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    self._lost()
                    await backoff.wait(self._stop, f"result subscriber lost Redis ({exc})")
                finally:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
        except BaseException:
            self._lost()  # whatever ended it (its supervisor starts it again): no session waits on it
            raise
        finally:
            await self._client.aclose()

    def _lost(self) -> None:
        self._pubsub = None
        self.connected.clear()
        self._fail_sessions()

    def _fail_sessions(self) -> None:
        if self._queues:
            log.error("telling %d live session(s) that their results may be lost", len(self._queues))
        for queue in self._queues.values():
            # A full queue means a backlog to read first; the session's timeouts still end it.
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(LOST)

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
        """Subscribe to ``session``'s channel; yield its queue once Redis confirmed.

        A session that opens while the subscriber connection is (re)connecting waits for it, up
        to the confirmation timeout; then ``redis.ConnectionError`` is raised.
        """
        try:
            await asyncio.wait_for(self.connected.wait(), self._confirm_timeout)
        except TimeoutError:
            raise redis.ConnectionError("the result subscriber is reconnecting to Redis") from None
        pubsub = self._pubsub
        assert pubsub is not None
        channel = keys.result_channel(session).encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        confirmed = asyncio.Event()
        self._queues[channel] = queue
        self._confirmed[channel] = confirmed
        try:
            await pubsub.subscribe(channel)
            try:
                await asyncio.wait_for(confirmed.wait(), self._confirm_timeout)
            except TimeoutError:
                raise SubscriptionError(f"Redis did not confirm the subscription to {channel!r}") from None
            yield queue
        finally:
            del self._queues[channel], self._confirmed[channel]
            if self._pubsub is pubsub:
                # On a broken connection the router sees the failure too and reconnects.
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
                    await pubsub.unsubscribe(channel)
