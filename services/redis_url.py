"""Redis clients from a ``--redis-url``: one Redis, or a primary found through Redis Sentinel.

- ``redis://[[username]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix://...``:
  that server (redis-py's ``from_url``, with its query options such as ``ssl_ca_certs``).
- ``redis+sentinel://[[username]:password@]host:port[,host:port...]/service_name[/db][?options]``
  and ``rediss+sentinel://...``: the Sentinels at those addresses are asked which server is the
  primary of ``service_name``; after a failover a connection that breaks is made again to the new
  primary (redis-py's Sentinel client). An IPv6 host is written in brackets, ``[::1]:26379``.
  The username and password are the Redis servers' (an ACL user; without one, ``default``).
  ``rediss+sentinel`` speaks TLS to the Sentinels and to the servers alike (as KEDA's
  ``enableTLS`` does). Options, each at most once:

  - ``sentinel_username``, ``sentinel_password``: what the Sentinels require (their
    ``requirepass`` or an ACL user); without them the Sentinels are asked without AUTH, since a
    Sentinel with no password refuses one.
  - ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs`` (``required``,
    ``optional``, ``none``), ``ssl_check_hostname`` (``true``/``false``): TLS settings, for the
    Sentinels and the servers; only with ``rediss+sentinel``.

  Credentials and option values are percent-escaped (``p%40ss`` for ``p@ss``; the Helm chart
  escapes what it writes).

Sentinel pools do not wait for a free connection when all are busy, as the plain blocking pool
does; their size is unbounded instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as redis
from redis.asyncio.sentinel import Sentinel

SCHEME = "redis+sentinel"
TLS_SCHEME = "rediss+sentinel"
SENTINEL_SOCKET_TIMEOUT_S = 1.0
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
CERT_REQS = ("required", "optional", "none")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    username: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False
    tls_options: dict[str, str | bool] = field(default_factory=dict)

    def server_options(self) -> dict[str, Any]:
        """Connection options of the Redis servers (the primary)."""
        options: dict[str, Any] = {"username": self.username, "password": self.password, "db": self.db}
        if self.tls:
            options |= {"ssl": True, **self.tls_options}
        return options

    def sentinel_options(self) -> dict[str, Any]:
        """Connection options of the Sentinels."""
        options: dict[str, Any] = {
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "username": self.sentinel_username,
            "password": self.sentinel_password,
        }
        if self.tls:
            options |= {"ssl": True, **self.tls_options}
        return options


def parse_sentinel(url: str) -> SentinelURL | None:
    """The parts of a Sentinel URL; None for any other URL; ValueError if malformed."""
    scheme, _, rest = url.partition("://")
    if scheme not in (SCHEME, TLS_SCHEME):
        return None
    tls = scheme == TLS_SCHEME
    # Split by hand: urlsplit may refuse a netloc of several hosts with an IPv6 one among them.
    rest, _, _ = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path_part = rest.partition("/")
    auth, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = tuple(_host_port(url, item.strip()) for item in hostlist.split(","))
    path = [p for p in path_part.split("/") if p] if slash else []
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"{redacted(url)}: the path must be /service_name or /service_name/db")
    options = _options(url, query, tls)
    return SentinelURL(
        hosts=hosts,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        password=password,
        username=username,
        sentinel_username=_text(options.pop("sentinel_username", None)),
        sentinel_password=_text(options.pop("sentinel_password", None)),
        tls=tls,
        tls_options=options,
    )


def _host_port(url: str, item: str) -> tuple[str, int]:
    match = _HOST_PORT.match(item)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"{redacted(url)}: each Sentinel must be host:port (IPv6: [address]:port)")
    return match["v6"] or match["host"], port


def _options(url: str, query: str, tls: bool) -> dict[str, str | bool]:
    known = ("sentinel_username", "sentinel_password", *TLS_OPTIONS)
    options: dict[str, str | bool] = {}
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{redacted(url)}: the options must be name=value&name=value") from None
    for name, values in parsed.items():
        if name not in known:
            raise ValueError(f"{redacted(url)}: unknown option {name!r} (known: {', '.join(known)})")
        if len(values) > 1:
            raise ValueError(f"{redacted(url)}: option {name!r} given {len(values)} times")
        if name in TLS_OPTIONS and not tls:
            raise ValueError(f"{redacted(url)}: {name} needs TLS ({TLS_SCHEME}://)")
        options[name] = values[0]
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None and reqs not in CERT_REQS:
        raise ValueError(f"{redacted(url)}: ssl_cert_reqs must be one of {', '.join(CERT_REQS)}")
    check = options.get("ssl_check_hostname")
    if check is not None:
        if check not in ("true", "false"):
            raise ValueError(f"{redacted(url)}: ssl_check_hostname must be true or false")
        options["ssl_check_hostname"] = check == "true"
    return options


def _text(value: str | bool | None) -> str | None:
    return None if value is None else str(value)


def redacted(url: str) -> str:
    """The URL without its credentials or options, fit for an error message."""
    scheme, _, rest = url.partition("://")
    rest = rest.partition("#")[0].partition("?")[0]
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


def client(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (``options`` go to each connection: retry, timeouts...)."""
    sentinel = parse_sentinel(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **options)
    primary: redis.Redis = sentinels(sentinel).master_for(
        sentinel.service, **sentinel.server_options(), **options
    )
    return primary


def sentinels(url: SentinelURL) -> Sentinel:
    return Sentinel(list(url.hosts), sentinel_kwargs=url.sentinel_options())  # type: ignore[no-untyped-call]
