"""Redis clients from a ``--redis-url``: one Redis, or a primary found through Redis Sentinel.

- ``redis://[:password@]host:port/db`` (also ``rediss://``, ``unix://``): that server.
- ``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]``: the Sentinels
  at those addresses are asked which server is the primary of ``service_name``; after a failover
  a connection that breaks is made again to the new primary (redis-py's Sentinel client). The
  password is the Redis servers' (the Sentinels are asked without one).

Sentinel pools do not wait for a free connection when all are busy, as the plain blocking pool
does; their size is unbounded instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.sentinel import Sentinel

SCHEME = "redis+sentinel"


@dataclass(frozen=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel(url: str) -> SentinelURL | None:
    """The parts of a ``redis+sentinel://`` URL; None for any other URL; ValueError if malformed."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        return None
    auth, _, hostlist = parts.netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) or None if auth else None
    hosts = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{url!r}: each Sentinel must be host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{url!r}: the path must be /service_name or /service_name/db")
    return SentinelURL(tuple(hosts), path[0], int(path[1]) if len(path) == 2 else 0, password)


def client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (``options`` go to each connection: retry, timeouts...)."""
    sentinel = parse_sentinel(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    primary: redis.Redis = sentinels(sentinel).master_for(
        sentinel.service, password=sentinel.password, db=sentinel.db, **options
    )
    return primary


def sentinels(url: SentinelURL) -> Sentinel:
    return Sentinel(list(url.hosts), socket_timeout=1.0)  # type: ignore[no-untyped-call]
