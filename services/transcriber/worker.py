"""The consume loop: stream entries in, transcripts published, entries acknowledged.

Reads up to ``max_batch`` entries with the consumer group, transcribes them in
one batch off the event loop, publishes each result on its session's channel,
and only then acknowledges (and deletes) the entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import redis.asyncio as redis

from services import keys
from services.audio import pcm16_to_float
from services.lifecycle import Backoff, connect_redis, install_stop_signals
from services.protocol import SegmentJob, SegmentResult
from services.transcriber.config import TranscriberConfig
from services.transcriber.guard import judge
from services.transcriber.model import SpeechModel

log = logging.getLogger("transcriber")

HEARTBEAT_S = 2.0
ALIVE_TTL_MS = 10_000
BLOCK_MS = 1000  # how long one read waits; also bounds how late a stop is noticed


async def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the consumer group (from id 0, so nothing queued earlier is skipped)."""
    try:
        await client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Worker:
    def __init__(self, config: TranscriberConfig, client: redis.Redis, model: SpeechModel) -> None:
        self.config = config
        self.redis = client
        self.model = model
        self.stream = keys.segment_stream(config.name)

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_group(self.redis, self.stream)
        async with asyncio.TaskGroup() as tasks:
            heartbeat = tasks.create_task(self._heartbeat())
            log.info("consumer %s serving %r from %s", self.config.consumer, self.config.name, self.stream)
            backoff = Backoff()
            while not stop.is_set():
                try:
                    reply: Any = await self.redis.xreadgroup(
                        keys.GROUP,
                        self.config.consumer,
                        {self.stream: ">"},
                        count=self.config.max_batch,
                        block=BLOCK_MS,
                    )
                    entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
                    if entries:
                        await self._process(entries)
                    backoff.reset()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    # Unacknowledged entries stay pending in the group; nothing is lost.
                    await backoff.wait(stop, f"Redis unreachable ({exc})")
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                await self.redis.set(keys.alive_key(self.config.name), self.config.consumer, px=ALIVE_TTL_MS)
            await asyncio.sleep(HEARTBEAT_S)

    async def _process(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        jobs: list[SegmentJob] = []
        for entry_id, fields in entries:
            try:
                jobs.append(SegmentJob.from_fields(fields))
            except ValueError as exc:
                log.error("entry %s dropped: %s", entry_id.decode(), exc)
        results = await asyncio.to_thread(self._transcribe, jobs) if jobs else []
        ids = [entry_id for entry_id, _ in entries]
        async with self.redis.pipeline(transaction=True) as pipe:
            for result in results:
                pipe.publish(keys.result_channel(result.session), result.to_json())
            pipe.xack(self.stream, keys.GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    def _transcribe(self, jobs: list[SegmentJob]) -> list[SegmentResult]:
        """Blocking: runs in a worker thread; this process's only model user."""
        started = time.time()
        try:
            transcripts = self.model.transcribe([pcm16_to_float(job.pcm) for job in jobs])
        except Exception as exc:
            log.exception("batch of %d failed", len(jobs))
            return [SegmentResult(j.session, j.segment, "error", reason=f"model failed: {exc}") for j in jobs]
        finished = time.time()
        results = []
        for job, transcript in zip(jobs, transcripts, strict=True):
            verdict = judge(transcript.text, transcript.no_speech_prob)
            timings = {
                "endpoint_at": job.endpoint_at,
                "enqueued_at": job.enqueued_at,
                "model_start": started,
                "model_end": finished,
                "batch": float(len(jobs)),
                "audio": job.duration,
            }
            results.append(
                SegmentResult(
                    job.session,
                    job.segment,
                    "text" if verdict.text else "empty",
                    text=verdict.text,
                    reason=verdict.reason,
                    timings=timings,
                )
            )
            log.info(
                "session %s segment %d: %.2f s audio in %.2f s (batch %d, no-speech %.2f): %r%s",
                job.session,
                job.segment,
                job.duration,
                finished - started,
                len(jobs),
                transcript.no_speech_prob,
                transcript.text[:80],
                f" dropped ({verdict.reason})" if verdict.reason else "",
            )
        return results


async def run(config: TranscriberConfig, model: SpeechModel) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    client = await connect_redis(config.redis_url, stop)
    try:
        await Worker(config, client, model).run(stop)
    finally:
        await client.aclose()
    log.info("consumer %s stopped", config.consumer)
