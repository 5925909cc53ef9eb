"""The ingest's server (aiohttp, one port): plain HTTP, the admission of WebSocket handshakes,
the sessions, the drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import replace
from http import HTTPStatus
from urllib.parse import urlsplit

import redis.asyncio as redis
from aiohttp import web

from services import keys, metrics, redis_url
from services.catalog import requested_pool
from services.ingest.config import IngestConfig
from services.ingest.core.channels import Channels
from services.ingest.edge import admission, auth, routes, uploads
from services.ingest.edge import web as pages
from services.ingest.edge.connection import Closed, Connection, Keepalive
from services.ingest.edge.tls import Certificates
from services.ingest.outputs import events, webhook
from services.ingest.outputs.webhook import Webhook
from services.ingest.pipeline.backlog import waiting
from services.ingest.pipeline.results import ResultRouter
from services.ingest.pipeline.session import CallSession, ClientGone, Session
from services.ingest.pipeline.talking import Talking
from services.ingest.protocols.adapter import Adapter, Opened
from services.ingest.protocols.native import Native
from services.ingest.protocols.telephony import frames as telephony
from services.ingest.protocols.telephony.call import Call
from services.lifecycle import connect_redis, install_stop_signals, supervise
from services.metrics import IngestMetrics
from services.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    ProtocolError,
    SessionParams,
    parse_call_query,
)

log = logging.getLogger("ingest")

MAX_HEADER_BYTES = 8190  # one header line, as aiohttp's default
CLEANUP_S = 5.0  # after the drain, what is left (a keep-alive HTTP connection) gets this long


class Ingest:
    def __init__(
        self, config: IngestConfig, client: redis.Redis, router: ResultRouter, metrics: IngestMetrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.redis = client
        # Readers of calls' events block in XREAD, each on a connection of its own: not the pool
        # the sessions share.
        self.readers = redis_url.client(config.redis_url)
        self.router = router
        calls = config.calls
        self.webhook = (
            Webhook(calls.webhook_url, calls.webhook_secret, metrics) if calls.webhook_url else None
        )
        self.talking = Talking(client)
        self.sessions = 0
        self.connections: set[Connection] = set()  # the WebSockets open now, closed by the drain
        self.idle = asyncio.Event()
        self.idle.set()
        self.uploads = uploads.Uploads(config, client, router, metrics, self.resolve_model)

    async def served_models(self) -> list[str]:
        prefix = keys.alive_key("")
        names = [key.decode()[len(prefix) :] async for key in self.redis.scan_iter(match=keys.ALIVE_PATTERN)]
        return sorted(names)

    async def resolve_model(self, requested: str | None) -> tuple[str, bool]:
        """The pool a session is served by, and whether it must wait for the pool's first
        transcriber (a declared pool, ``--pools``, that an autoscaler keeps at zero for now)."""
        name = requested_pool(requested) if requested else self.config.default_model
        if await self.redis.exists(keys.alive_key(name)):
            return name, False
        if name in self.config.pools:
            log.info("pool %r has no live transcriber yet; its segments wait for one", name)
            return name, True
        served = await self.served_models()
        if not served:
            raise ProtocolError(
                "no_transcriber", "no transcriber is running; try again later", CLOSE_TRY_AGAIN
            )
        if requested is None and len(served) == 1:
            # A first run that started the services without --default-model must just work.
            log.info("default model %r is not served; serving %r, the only one served", name, served[0])
            return served[0], False
        raise ProtocolError(
            "unknown_model", f"model {name!r} is not served; served now: {', '.join(served)}", CLOSE_POLICY
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Every request on the port: the health check, plain HTTP (the page), and WebSocket
        handshakes, admitted (``admit``) before they are accepted."""
        path = urlsplit(request.raw_path).path
        if path == "/healthz":
            if not self.router.connected.is_set():  # no results could reach a session opened now
                return pages.text(HTTPStatus.SERVICE_UNAVAILABLE, "the result subscriber has lost Redis")
            return pages.text(HTTPStatus.OK, "ok")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            if request.method == "POST" and path in uploads.PATHS:
                return await self.uploads.handle(request, path)
            if self.config.web:
                return await pages.respond(request, path, self.served_models, self.config.default_model)
            return pages.text(HTTPStatus.NOT_FOUND, "not found; connect with a WebSocket client")
        origin = request.headers.get("Origin")
        if self.config.allowed_origins and origin is not None and origin not in self.config.allowed_origins:
            log.warning("refused %s: origin %s is not allowed", request.remote, origin[:80])
            self.metrics.sessions_refused.labels("origin").inc()
            return admission.forbidden(f"origin {origin[:80]} is not allowed")
        refusal = await self.admit(request, path)
        if refusal is not None:
            return refusal
        config = self.config
        ws = web.WebSocketResponse(
            # Deepgram's browser form ``token, KEY`` is answered with ``token`` (a browser refuses a
            # handshake that selects none of its offers); any other client goes on without one.
            protocols=(auth.TOKEN_SUBPROTOCOL,),
            # Frames up to twice the limit are read and refused with an error event; larger ones
            # are cut off by aiohttp itself (close 1009).
            max_msg_size=2 * config.max_frame_bytes,
            autoping=False,  # the keepalive is Connection's own
            compress=False,
        )
        await ws.prepare(request)
        connection = Connection(request, ws, Keepalive(config.ping_interval, config.ping_timeout))
        self.connections.add(connection)
        try:
            await self.handle(connection)
        finally:
            self.connections.discard(connection)
            connection.stop_keepalive()
            await connection.close()  # a no-op once closed
        return ws

    async def admit(self, request: web.Request, path: str) -> web.Response | None:
        """The admission of a WebSocket handshake: a refusal, or None to accept it."""
        remote = request.remote
        route = routes.find(path)
        target = request.raw_path
        key = auth.presented_key(request.headers, target)
        # A telephony stream without a key in its request carries it in its start's custom
        # parameters (Twilio's stream URL takes no query string): checked once start arrives.
        later = isinstance(route, routes.CallRoute) and key is None
        if self.config.api_keys and not later and not auth.key_valid(key, self.config.api_keys):
            log.warning("refused %s: missing or wrong API key", remote)
            self.metrics.sessions_refused.labels("unauthorized").inc()
            return admission.unauthorized()
        twilio_token = self.config.calls.twilio_auth_token
        if (
            path == "/twilio"
            and twilio_token
            and not auth.twilio_signed(request.headers, target, twilio_token)
        ):
            log.warning("refused %s: no valid X-Twilio-Signature", remote)
            self.metrics.sessions_refused.labels("unauthorized").inc()
            return admission.forbidden("missing or wrong X-Twilio-Signature")
        if self.sessions >= self.config.max_sessions:
            log.warning("refused %s: %d sessions already", remote, self.sessions)
            self.metrics.sessions_refused.labels("capacity").inc()
            return admission.busy(f"server full ({self.sessions} sessions)")
        if isinstance(route, routes.EventsRoute):
            return None  # a reader of a call's events: no model, no backlog
        query = urlsplit(target).query
        try:
            params = parse_call_query(query) if isinstance(route, routes.CallRoute) else route.open(query)[0]
        except ProtocolError as error:
            if isinstance(route, routes.ClientRoute) and route.refuse_at_handshake:
                log.info("refused %s at the handshake: %s (%s)", remote, error.code, error.message)
                self.metrics.sessions_refused.labels(error.code).inc()
                return route.refuse_at_handshake(error)
            return None  # the session reports it in its protocol
        name = requested_pool(params.model) if params.model else self.config.default_model
        try:
            backlog = await waiting(self.redis, keys.segment_stream(name))
        except redis.RedisError as exc:
            log.error("refused %s: Redis failed: %s", remote, exc)
            self.metrics.sessions_refused.labels("backend_unavailable").inc()
            return admission.busy("the queue is unavailable")
        if backlog > self.config.max_backlog:
            log.warning("refused %s: %d segments waiting for %s", remote, backlog, name)
            self.metrics.sessions_refused.labels("backlog").inc()
            return admission.busy(f"{backlog} segments are waiting for model {name}")
        return None

    async def refuse(self, ws: Connection, error: ProtocolError, adapter: Adapter | None) -> None:
        """Tell the client why, in its protocol (``adapter``; none for a telephony platform, which
        reads nothing), then close with the error's close code and reason (the closing handshake
        reads and drops the frames the client still sends)."""
        self.metrics.sessions_refused.labels(error.code).inc()
        self.metrics.errors.labels(error.code).inc()
        try:
            for message in adapter.refusal(error) if adapter else []:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ws.send(message), self.config.send_timeout)
            await ws.close(error.close_code, error.message[:120])
        except Closed:
            pass

    async def handle(self, ws: Connection) -> None:
        session_id = uuid.uuid4().hex[:16]
        self.sessions += 1
        self.metrics.sessions_active.inc()
        self.idle.clear()
        url = urlsplit(ws.target)
        route = routes.find(url.path)
        # The protocol's adapter, to say why a session ends early: our own protocol's until the
        # route's parses (its query may be what is wrong); none for a telephony platform.
        adapter: Adapter | None = None if isinstance(route, routes.CallRoute) else Native()
        try:
            if isinstance(route, routes.EventsRoute):
                start = events.start_after(url.query)
                await events.follow(ws, self.readers, route.call, start, self.config.idle_timeout)
            elif isinstance(route, routes.CallRoute):
                await self.handle_call(ws, session_id, route.platform)
            else:
                params, adapter = route.open(url.query)
                await self.handle_session(ws, session_id, params, adapter)
        except* ProtocolError as group:
            error = group.exceptions[0]
            assert isinstance(error, ProtocolError)
            log.info("session %s refused: %s (%s)", session_id, error.code, error.message)
            await self.refuse(ws, error, adapter)
        except* (Closed, ClientGone):
            log.info("session %s: client went away", session_id)
        except* redis.RedisError as group:
            log.error("session %s: Redis failed: %s", session_id, group.exceptions[0])
            error = ProtocolError("backend_unavailable", "the queue is unavailable", CLOSE_TRY_AGAIN)
            await self.refuse(ws, error, adapter)
        except* Exception:
            log.exception("session %s failed", session_id)
            error = ProtocolError("internal_error", "internal server error", CLOSE_INTERNAL)
            await self.refuse(ws, error, adapter)
        finally:
            self.sessions -= 1
            self.metrics.sessions_active.dec()
            if not self.sessions:
                self.idle.set()

    def session_config(self, cold: bool) -> IngestConfig:
        """A session's settings: those of the ingest, but a session that waits for its pool's first
        transcriber gives its segments that long on top of ``--result-timeout``."""
        if not cold:
            return self.config
        config = self.config
        return replace(config, result_timeout=config.result_timeout + config.pool_start_timeout)

    async def handle_session(
        self, ws: Connection, session_id: str, params: SessionParams, adapter: Adapter
    ) -> None:
        """A client speaking a wire protocol: audio in, events back on the same socket."""
        model, cold = await self.resolve_model(params.model)
        config = self.session_config(cold)
        async with self.router.subscription(session_id) as results:
            channels = Channels(session_id, model, params, config, self.metrics, time.time())
            for message in adapter.greeting(Opened(session_id, model, params, channels.partials)):
                await ws.send(message)
            log.info(
                "session %s open from %s: %s, model %s, %d Hz, %s, %d channel(s)",
                session_id,
                ws.remote_address,
                type(adapter).__name__,
                model,
                params.sample_rate,
                params.encoding,
                params.channels,
            )
            self.metrics.sessions_opened.labels(model).inc()
            await Session(ws, channels, adapter, config, self.redis, results, cold, self.talking).run()

    async def handle_call(self, ws: Connection, session_id: str, platform: telephony.Platform) -> None:
        """A telephony platform's media stream: its events go to the call's event stream. Its
        settings (and its API key, when the request carried none) come from the stream URL's query
        and from ``start``'s custom parameters."""
        try:
            async with asyncio.timeout(self.config.idle_timeout):
                start = await read_start(ws, platform)
        except TimeoutError:
            raise ProtocolError("idle_timeout", f"no start within {self.config.idle_timeout:g} s") from None
        keys_needed = self.config.api_keys and auth.presented_key(ws.headers, ws.target) is None
        if keys_needed and not auth.key_valid(start.custom.get("token"), self.config.api_keys):
            raise ProtocolError("unauthorized", "missing or wrong API key (custom parameter 'token')")
        params = parse_call_query(urlsplit(ws.target).query, start.custom)
        model, cold = await self.resolve_model(params.model)
        config = self.session_config(cold)
        async with self.router.subscription(session_id) as results:
            log.info(
                "session %s: %s call %s, tracks %s, %s at %d Hz, model %s",
                session_id,
                platform,
                start.call,
                ",".join(start.tracks),
                start.encoding,
                start.sample_rate,
                model,
            )
            self.metrics.sessions_opened.labels(model).inc()
            call = Call(start, session_id, model, params, config, self.metrics, time.time())
            await CallSession(ws, call, config, self.redis, results, cold, self.webhook, self.talking).run()


async def read_start(ws: Connection, platform: telephony.Platform) -> telephony.Start:
    """The platform's frames up to its ``start`` (a ``connected`` may come first)."""
    while True:
        parsed = telephony.parse(platform, await ws.recv())
        if isinstance(parsed, telephony.Start):
            return parsed
        if not isinstance(parsed, telephony.Connected):
            raise ProtocolError("bad_message", f"{type(parsed).__name__.lower()} before start")


async def drain(runner: web.AppRunner, ingest: Ingest, grace: float) -> None:
    """Stop accepting, give live sessions ``grace`` seconds, then close them with 1001."""
    for listening in list(runner.sites):
        await listening.stop()
    if ingest.sessions or ingest.uploads.running:
        log.info(
            "draining %d live session(s) and %d file(s) for up to %.0f s",
            ingest.sessions,
            ingest.uploads.running,
            grace,
        )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace):
            await ingest.idle.wait()
            await ingest.uploads.idle.wait()
    if ingest.connections:
        log.info("closing %d session(s) still open after the drain", len(ingest.connections))
        await asyncio.gather(
            *(connection.close(CLOSE_GOING_AWAY, "server shutting down") for connection in ingest.connections)
        )
    await runner.cleanup()


async def wait_first(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run(config: IngestConfig) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    client = await connect_redis(config.redis_url, stop)
    ingest_id = uuid.uuid4().hex[:8]
    router = ResultRouter(config.redis_url, ingest_id)
    registry = metrics.new_registry()
    ingest = Ingest(config, client, router, metrics.IngestMetrics(registry))
    certificates = Certificates(config.tls_cert, config.tls_key) if config.tls_cert else None
    metrics.serve(registry, config.metrics_port)
    try:
        async with asyncio.TaskGroup() as tasks:
            # Side tasks: each restarted when it fails, never ending the sessions beside it.
            restarts = ingest.metrics.task_restarts
            side = [tasks.create_task(supervise("result subscriber", router.run, restarts))]
            if certificates:
                side.append(tasks.create_task(supervise("certificate watcher", certificates.watch, restarts)))
            if ingest.webhook:
                side.append(tasks.create_task(supervise("webhook", ingest.webhook.run, restarts)))
            # Listen only once results can be received: a session opened earlier would be refused.
            await wait_first(router.connected, stop)
            app = web.Application(handler_args={"max_field_size": MAX_HEADER_BYTES})
            app.router.add_route("*", "/{path:.*}", ingest.dispatch)
            # No access log: a line per request would cost more than the frames of a session.
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=CLEANUP_S)
            await runner.setup()
            listening = web.TCPSite(
                runner, config.host, config.port, ssl_context=certificates.context if certificates else None
            )
            await listening.start()
            for address in runner.addresses:
                host, port = address[:2]
                scheme = "wss" if certificates else "ws"
                log.info("ingest %s listening on %s://%s:%d", ingest_id, scheme, host, port)
            await stop.wait()
            await drain(runner, ingest, config.drain_timeout)
            if ingest.webhook is not None:  # the drained sessions' last finals, bounded
                await ingest.webhook.drain(webhook.DRAIN_S)
            for task in side:
                task.cancel()
    finally:
        await client.aclose()
        await ingest.readers.aclose()
    log.info("ingest %s stopped", ingest_id)
