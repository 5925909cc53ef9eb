"""Process lifecycle shared by the services: signals and Redis start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as redis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from services.redis_url import client as redis_client
from services.redis_url import parse_sentinel, redacted

log = logging.getLogger("lifecycle")


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` for a graceful shutdown; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


REDIS_POOL_SIZE = 64
REDIS_POOL_WAIT_S = 10.0


async def connect_redis(url: str, stop: asyncio.Event, max_wait: float = 30.0) -> redis.Redis:
    """Connect to Redis, retrying with backoff for up to ``max_wait`` seconds.

    Raises ``redis.ConnectionError`` when Redis stays unreachable.
    """
    # A pooled connection that Redis closed (it restarted, or a failover moved the primary) fails
    # the next command sent on it, though Redis is back: such a command is sent again on a new
    # connection, twice at most. Only connection errors: a command that timed out may have run.
    again = {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        "retry_on_error": [redis.ConnectionError],
    }
    if parse_sentinel(url) is not None:
        client = redis_client(url, health_check_interval=10, **again)
    else:
        # A blocking pool: when every connection is busy (hundreds of sessions enqueueing at once)
        # a command waits for one, where redis-py's default pool (100, no waiting) raises.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_S, health_check_interval=10, **again
        )
        client = redis.Redis.from_pool(pool)
    deadline = asyncio.get_running_loop().time() + max_wait
    backoff = Backoff()
    while True:
        try:
            await client.ping()
            return client
        except (redis.ConnectionError, OSError) as exc:
            if stop.is_set() or asyncio.get_running_loop().time() + backoff.delay > deadline:
                await client.aclose()
                raise redis.ConnectionError(f"Redis at {redacted(url)} is unreachable: {exc}") from None
            await backoff.wait(stop, f"Redis at {redacted(url)} not reachable yet ({exc})")


class Backoff:
    """Exponential retry delay (0.1 s doubling to 2 s) that logs each wait."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, stop: asyncio.Event, why: str) -> None:
        """Sleep for the current delay (or until ``stop``), then lengthen it."""
        log.warning("%s; retrying in %.1f s", why, self.delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self.delay)
        self.delay = min(self.delay * 2, self.cap)


def honour_cancellation() -> None:
    """Raise a cancellation that a library swallowed. redis-py 8.1's asyncio client on Python 3.11
    can let a ``CancelledError`` that lands during a command go and return the command's result
    (cancelling a task in a loop of XADDs, the task went on in 3 of 4 tries): a task whose
    sibling failed in a TaskGroup then never stops. Called after each Redis command of a task that
    a TaskGroup may cancel; a task asked to cancel (``cancelling()``) stops here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def supervise(name: str, run: Callable[[], Coroutine[Any, Any, None]], restarts: Counter) -> None:
    """Run a task that lives beside the sessions (``run`` makes a fresh coroutine each time) until
    cancelled. Whatever it raises is logged once, counted in ``restarts{task=name}`` and the task
    started again with backoff (0.5 s doubling to 30 s): a side task never ends its siblings."""
    backoff = Backoff(first=0.5, cap=30.0)
    never = asyncio.Event()
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            why = "returned"
        except Exception as exc:  # the boundary of a side task: anything it meets outside
            log.exception("%s failed", name)
            why = f"failed ({type(exc).__name__})"
        restarts.labels(name).inc()
        if loop.time() - started > backoff.cap:
            backoff.reset()  # it had served a while: a new failure, not the same one again
        await backoff.wait(never, f"{name} {why}")
