"""Files over HTTP: Deepgram's pre-recorded ``POST /v1/listen`` and OpenAI's
``POST /v1/audio/transcriptions``, on the ingest's port, with its API keys.

An upload is spooled to a temporary file as it arrives (bounded by ``--max-file-mb``; never
whole in memory), hashed on the way, opened with libsndfile, then run as a ``FileSession``.
Files are bounded at once per ingest (``--max-files``) and per pool across ingests
(``--max-pool-files``, the sorted set ``keys.files_running`` with a heartbeat per file): over
either, 429 with ``Retry-After``. Each protocol says every refusal in its own shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as redis
from aiohttp import BodyPartReader, StreamReader, web

from services import keys
from services.ingest.config import IngestConfig
from services.ingest.core.channels import Channels
from services.ingest.edge import auth
from services.ingest.edge.admission import RETRY_AFTER_S
from services.ingest.pipeline.files import Audio, FileError, FileSession, RawFormat, open_audio
from services.ingest.pipeline.results import ResultRouter
from services.ingest.pipeline.session import ClientGone
from services.ingest.protocols import deepgram_files, openai_files
from services.ingest.protocols.files import FileInfo, iso_utc
from services.metrics import IngestMetrics
from services.protocol import MAX_CHANNELS, Final, ProtocolError, SessionParams

log = logging.getLogger("ingest.files")

PATHS = ("/v1/listen", "/v1/audio/transcriptions")
CHUNK_BYTES = 1 << 16
MAX_FIELD_BYTES = 64 * 1024  # a form field or a JSON body (not the audio)
RUNNING_BEAT_S = 5.0  # a running file says so this often in keys.files_running
RUNNING_STALE_S = 30.0  # an entry older than this is of an ingest that died
TOO_MANY = "too_many_files"


@dataclass(frozen=True)
class Spooled:
    path: str
    sha256: str
    size: int


class Uploads:
    """The two file routes. ``resolve_model`` is the ingest's: a pool name (or None) to the
    pool that serves it and whether that pool has no transcriber yet."""

    def __init__(
        self,
        config: IngestConfig,
        client: redis.Redis,
        router: ResultRouter,
        metrics: IngestMetrics,
        resolve_model: Callable[[str | None], Awaitable[tuple[str, bool]]],
    ) -> None:
        self.config = config
        self.redis = client
        self.router = router
        self.metrics = metrics
        self.resolve_model = resolve_model
        self.running = 0  # files transcribed by this ingest now
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle(self, request: web.Request, path: str) -> web.StreamResponse:
        self.running += 1
        self.idle.clear()
        try:
            if path == "/v1/listen":
                return await self.deepgram(request)
            return await self.openai(request)
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()

    # --- the protocols --------------------------------------------------------------------------

    async def deepgram(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())

        def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
            body = deepgram_files.error_body(message, request_id)
            extra = {**deepgram_files.error_headers(message, request_id), **(headers or {})}
            return web.json_response(body, status=status, headers=extra)

        try:
            self.admit(request)
            params, options = deepgram_files.parse(urlsplit(request.raw_path).query)
            if request.content_type == "application/json":
                await refuse_url_body(request.content)
            raw = (
                RawFormat(options.encoding, options.sample_rate or params.sample_rate, options.channels or 1)
                if options.encoding
                else None
            )
            info, finals = await self.transcribe(request, request.content, params, raw, options.multichannel)
        except FileError as error:
            return refusal(error.status, error.message, retry_after(error))
        except ProtocolError as error:
            return refusal(HTTPStatus.BAD_REQUEST, error.message)
        return web.json_response(
            deepgram_files.response(replace(info, request_id=request_id), options, finals)
        )

    async def openai(self, request: web.Request) -> web.StreamResponse:
        stream: web.StreamResponse | None = None
        try:
            self.admit(request)
            if request.content_type != "multipart/form-data":
                raise FileError("bad_request", "send multipart/form-data with a 'file' part")
            form, spooled = await self.read_form(request)
            asked = openai_files.parse(form, self.config.pools | {self.config.default_model})

            async def delta(final: Final) -> None:
                nonlocal stream
                if stream is None:
                    stream = await start_events(request)
                await stream.write(openai_files.delta(final))

            on_final = delta if asked.stream else None
            info, finals = await self.transcribe(request, spooled, asked.params, None, False, on_final)
            info = replace(info, language=asked.language)
        except (FileError, ProtocolError, openai_files.OpenAIError) as exc:
            error = openai_error(exc)
            if stream is not None:  # the stream began: its last event says why it ended
                await stream.write(openai_files.error_event(error))
                return stream
            headers = retry_after(exc) if isinstance(exc, FileError) else None
            return web.json_response(openai_files.error_body(error), status=error.status, headers=headers)
        if asked.stream:
            stream = stream or await start_events(request)
            await stream.write(openai_files.done(info, finals))
            return stream
        content_type, body = openai_files.render(asked, info, finals)
        answer = web.Response(body=body)
        answer.headers["Content-Type"] = content_type
        return answer

    # --- shared ---------------------------------------------------------------------------------

    def admit(self, request: web.Request) -> None:
        """The key and this ingest's bound on files at once; FileError when refused."""
        key = auth.presented_key(request.headers, request.raw_path)
        if self.config.api_keys and not auth.key_valid(key, self.config.api_keys):
            self.metrics.sessions_refused.labels("unauthorized").inc()
            raise FileError(
                "unauthorized",
                "missing or wrong API key: send 'Authorization: Bearer KEY'",
                HTTPStatus.UNAUTHORIZED,
            )
        if self.running > self.config.files.max_files:
            self.metrics.sessions_refused.labels(TOO_MANY).inc()
            raise FileError(
                TOO_MANY,
                f"this server transcribes {self.config.files.max_files} files at once; try again later",
                HTTPStatus.TOO_MANY_REQUESTS,
            )

    async def read_form(self, request: web.Request) -> tuple[dict[str, list[str]], Spooled]:
        """The form's fields (bounded) and its ``file`` part, spooled."""
        form: dict[str, list[str]] = {}
        spooled: Spooled | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise FileError("bad_request", "nested multipart bodies are not read")
            if part.name == "file":
                if spooled is not None:
                    raise FileError("bad_request", "one 'file' part per request")
                spooled = await self.spool(part_chunks(part))
                continue
            value = await part.read(decode=True)
            if len(value) > MAX_FIELD_BYTES:
                raise FileError("bad_request", f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            form.setdefault(part.name or "", []).append(value.decode("utf-8", "replace"))
        if spooled is None:
            raise FileError("bad_request", "the form has no 'file' part")
        return form, spooled

    async def spool(self, chunks: AsyncIterator[bytes]) -> Spooled:
        """An upload into a temporary file as it arrives: FileError (413) past the size limit."""
        limit = self.config.files.max_file_bytes
        digest = hashlib.sha256()
        size = 0
        spool = tempfile.NamedTemporaryFile(prefix="stt-upload-", delete=False)  # noqa: SIM115
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise FileError(
                        "file_too_large",
                        f"the file is over {limit // 1_000_000} MB",
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    )
                digest.update(chunk)
                await asyncio.to_thread(spool.write, chunk)
        except BaseException:
            spool.close()
            remove(spool.name)
            raise
        spool.close()
        if not size:
            remove(spool.name)
            raise FileError("bad_audio", "the file is empty")
        return Spooled(spool.name, digest.hexdigest(), size)

    async def transcribe(
        self,
        request: web.Request,
        body: StreamReader | Spooled,
        params: SessionParams,
        raw: RawFormat | None,
        keep_channels: bool,
        on_final: Callable[[Final], Awaitable[None]] | None = None,
    ) -> tuple[FileInfo, list[Final]]:
        """Spool (if not yet), open, bound, and run one file; its info and finals."""
        model, cold = await self.resolve_model(params.model)
        spooled = body if isinstance(body, Spooled) else await self.spool(body.iter_chunked(CHUNK_BYTES))
        try:
            audio = await asyncio.to_thread(open_audio, spooled.path, raw, keep_channels, MAX_CHANNELS)
            try:
                if audio.duration > self.config.files.max_file_s:
                    raise FileError(
                        "file_too_long",
                        f"{audio.duration:.0f} s of audio: the limit is {self.config.files.max_file_s:g} s",
                    )
                async with self.pool_slot(model) as file_id:
                    finals = await self.run(request, file_id, model, cold, params, audio, on_final)
            finally:
                audio.sound.close()
        finally:
            remove(spooled.path)
        created = iso_utc(datetime.now(UTC))
        info = FileInfo(file_id, created, audio.duration, audio.source_channels, spooled.sha256, model)
        return info, finals

    async def run(
        self,
        request: web.Request,
        file_id: str,
        model: str,
        cold: bool,
        params: SessionParams,
        audio: Audio,
        on_final: Callable[[Final], Awaitable[None]] | None,
    ) -> list[Final]:
        files = self.config.files
        config = replace(
            self.config,
            result_timeout=files.file_result_timeout + (self.config.pool_start_timeout if cold else 0.0),
            max_session_s=files.max_file_s + 1.0,
        )
        params = dataclasses.replace(
            params,
            sample_rate=audio.rate,
            channels=audio.channels,
            encoding="linear16",
            roles=(),
            partials=False,
        )

        def gone() -> bool:
            return request.transport is None or request.transport.is_closing()

        log.info(
            "file %s: %.1f s, %d channel(s) at %d Hz, model %s",
            file_id,
            audio.duration,
            audio.channels,
            audio.rate,
            model,
        )
        started = time.monotonic()
        async with self.router.subscription(file_id) as results:
            core = Channels(file_id, model, params, config, self.metrics, time.time())
            session = FileSession(audio, core, config, self.redis, results, cold, gone, on_final)
            try:
                await session.run()
            except* ClientGone:
                log.info("file %s: the client went away", file_id)
                raise FileError("client_gone", "the client went away") from None
        if session.failed:
            raise FileError(
                "segment_failed",
                f"{len(session.failed)} segment(s) failed: {session.failed[0].message}; try again",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        wall = time.monotonic() - started
        log.info(
            "file %s done: %d final(s), %.1fx real time",
            file_id,
            len(session.finals),
            audio.duration / max(wall, 1e-6),
        )
        return session.finals

    @contextlib.asynccontextmanager
    async def pool_slot(self, model: str) -> AsyncIterator[str]:
        """A place among the files ``model``'s pool runs at once (FileError 429 when none is free),
        kept alive by a heartbeat while the file runs, given back after."""
        running = keys.files_running(model)
        file_id = uuid.uuid4().hex[:16]
        now = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(running, "-inf", now - RUNNING_STALE_S)
            pipe.zadd(running, {file_id: now})
            pipe.zcard(running)
            replies: list[Any] = await pipe.execute()
        if replies[-1] > self.config.files.max_pool_files:
            await self.redis.zrem(running, file_id)
            self.metrics.sessions_refused.labels(TOO_MANY).inc()
            raise FileError(
                TOO_MANY,
                f"pool {model} transcribes {self.config.files.max_pool_files} files at once; try again later",
                HTTPStatus.TOO_MANY_REQUESTS,
            )
        beat = asyncio.create_task(self._beat(running, file_id))
        try:
            yield file_id
        finally:
            beat.cancel()
            with contextlib.suppress(redis.RedisError):
                await self.redis.zrem(running, file_id)

    async def _beat(self, running: str, file_id: str) -> None:
        while True:
            await asyncio.sleep(RUNNING_BEAT_S)
            with contextlib.suppress(redis.RedisError):
                await self.redis.zadd(running, {file_id: time.time()})


async def part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def refuse_url_body(content: StreamReader) -> None:
    """Deepgram's JSON body ``{"url": ...}``: refused, this service fetches nothing."""
    body = await content.read(MAX_FIELD_BYTES + 1)
    try:
        parsed = json.loads(body)
    except ValueError:
        raise FileError("bad_request", "the JSON body does not parse; send the audio itself") from None
    if isinstance(parsed, dict) and "url" in parsed:
        raise FileError("url_refused", deepgram_files.URL_REFUSED)
    raise FileError(
        "bad_request", 'a JSON body must be {"url": ...}, which this service refuses; send the audio'
    )


async def start_events(request: web.Request) -> web.StreamResponse:
    stream = web.StreamResponse(
        headers={"Content-Type": openai_files.STREAM_CONTENT_TYPE, "Cache-Control": "no-cache"}
    )
    await stream.prepare(request)
    return stream


def openai_error(exc: Exception) -> openai_files.OpenAIError:
    if isinstance(exc, openai_files.OpenAIError):
        return exc
    if isinstance(exc, FileError):
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(exc.status, "invalid_request_error")
        return openai_files.OpenAIError(
            exc.message, exc.status, "file" if exc.status in (400, 413) else None, exc.code, kind
        )
    assert isinstance(exc, ProtocolError)
    status = (
        HTTPStatus.SERVICE_UNAVAILABLE
        if exc.code in ("no_transcriber", "backend_unavailable")
        else HTTPStatus.BAD_REQUEST
    )
    return openai_files.OpenAIError(exc.message, status, None, exc.code)


def retry_after(error: FileError) -> dict[str, str] | None:
    """A refusal that may pass (too many files, no transcriber) says when to try again."""
    return {"Retry-After": str(RETRY_AFTER_S)} if error.status in (429, 503) else None


def remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)
