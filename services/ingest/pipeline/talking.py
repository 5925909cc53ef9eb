"""Telling a pool's transcribers that someone is speaking, before any segment of it is queued.

A finals transcriber takes file work only in a pause of its whole pool (``keys.live_key`` absent;
``services.transcriber.worker``). The transcribers stamp that key as they read live entries, but
the first segment of a talker who starts after a quiet spell is read only once it has been spoken
whole, and a finals transcriber may by then be deep in a pack of a file: that segment would wait
for it. So the ingest stamps the key too, as soon as a segment opens in any session of the pool and
while one stays open: the finals transcribers then start no new file work, and finish what they
hold while the speech goes on.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as redis

from services import keys

log = logging.getLogger("ingest.talking")

# The stamp says "someone spoke within this long" (the transcribers' default --file-idle-s)...
TALK_TTL_S = 2.0
# ...and is renewed at most this often per pool by one ingest, however many talk in it.
STAMP_EVERY_S = 0.5


class Talking:
    """One per ingest: ``heard(pool)`` on every frame during which a segment of ``pool`` is open."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._stamped: dict[str, float] = {}  # pool -> when (monotonic); bounded by the pools served

    async def heard(self, pool: str) -> None:
        now = time.monotonic()
        if now - self._stamped.get(pool, -STAMP_EVERY_S) < STAMP_EVERY_S:
            return
        self._stamped[pool] = now
        try:
            await self.redis.set(keys.live_key(pool), "ingest", px=round(TALK_TTL_S * 1000))
        except redis.RedisError as exc:  # a hint only: the session goes on without it
            log.debug("could not stamp %s: %s", keys.live_key(pool), exc)
