"""The consume loop: stream entries in, transcripts published, entries acknowledged.

A pool has three streams, each read through the one consumer group, in two lanes: the live
lane, finals (``stt:segments:<pool>``) and partial requests (``stt:partials:<pool>``), and the
file lane, the segments of uploaded files (``stt:files:<pool>``), so that a file never holds back
live audio. Role ``all`` reads all three, ``finals`` finals and files, ``partials`` partials and
files, one file segment at a time (it runs at nice +19: its file work takes only the CPU that
live work leaves, and a partial waits for at most one file segment). A finals (or ``all``)
transcriber takes files only once no transcriber of the pool has read a live entry for
``file_idle_s`` (``keys.live_key``, which each stamps as it reads one, and the ingest while a
segment is open): while anyone in the pool talks the files go to the partials transcriber, and in
a quiet pool to every transcriber.

Each round serves the first of these that has work:

1. live finals another (dead or stuck) consumer left pending longer than ``claim_idle_ms``
   (XAUTOCLAIM), up to ``max_batch``;
2. new live entries, read without waiting: finals up to ``max_batch`` (see ``_read_batch``),
   then the newest partial of each session;
3. only when that read found nothing (and, for a finals transcriber, the pool read no live
   entry for ``file_idle_s``), file entries: reclaimed as in 1, else new ones, up to ``file_batch``;
4. with nothing anywhere, one read over every served stream (the file lane as in 3) that waits
   up to BLOCK_MS; what it brings is served live first, then files.

A file is so transcribed batch after batch without a wait, and between two of its batches the
loop looks at the live streams again: a live segment waits for at most one file batch, and for
none once live traffic has kept the finals transcribers off the file lane.

Entries of sessions whose client is gone are skipped; the rest are transcribed in one batch off
the event loop. A result is published on its session's channel and only then is the entry
acknowledged and its stream trimmed (``ACK_AND_TRIM``). A final or file entry delivered more than
``max_attempts`` times goes to the dead-letter stream and its session gets an error for that
segment; partials are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import redis.asyncio as redis

from services import keys, metrics
from services.lifecycle import Backoff, connect_redis, install_stop_signals, supervise
from services.metrics import TranscriberMetrics
from services.protocol import SegmentJob, SegmentResult
from services.transcriber.batch import Entry, transcribe
from services.transcriber.config import TranscriberConfig
from services.transcriber.interface import SpeechModel

log = logging.getLogger("transcriber")

HEARTBEAT_S = 2.0
ALIVE_TTL_MS = 10_000
BLOCK_MS = 1000  # how long one read waits; also bounds how late a stop is noticed
DEAD_LETTER_MAXLEN = 10_000
# A partial request older than this has been overtaken by a newer one (they come every
# --partial-ms of speech) or by its final: it is dropped unanswered.
PARTIAL_MAX_AGE_S = 1.0

RawEntry = tuple[bytes, dict[bytes, bytes]]

# Acknowledge entries, then trim the stream to what the group still needs: from its oldest
# pending entry or, with none pending, from just past its last-delivered-id. One script, so
# no other consumer's read or acknowledgement comes in between.
#
# Never XDEL: on Redis 7.0 a deleted entry at or after the group's last-delivered-id, while
# an older entry is still in the stream, makes XINFO GROUPS report the group's lag as null
# (t_stream.c: streamRangeHasTombstones, then streamEstimateDistanceFromFirstEverEntry gives
# up), and KEDA's lagCount reads that as no backlog. XTRIM only moves the stream's first id
# and leaves no tombstone, so the lag stays entries-added - entries-read: the entries not yet
# delivered. Entries acknowledged behind an older pending one stay until that one is done.
# KEYS[1]: the stream; ARGV[1]: the group; ARGV[2..]: the ids to acknowledge.
ACK_AND_TRIM = """
local stream, group = KEYS[1], ARGV[1]
if redis.call('EXISTS', stream) == 0 then return 0 end
local acked = redis.call('XACK', stream, group, unpack(ARGV, 2))
local info
for _, fields in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local g = {}
  for i = 1, #fields, 2 do g[fields[i]] = fields[i + 1] end
  if g['name'] == group then info = g end
end
if info == nil then return acked end
local keep
if info['pending'] > 0 then
  keep = redis.call('XPENDING', stream, group)[2]
else
  local last = info['last-delivered-id']
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  -- seq + 1 is exact below 2^53 (Lua numbers are doubles); beyond, keep that one entry.
  keep = (#seq < 16) and (ms .. '-' .. string.format('%d', tonumber(seq) + 1)) or last
end
redis.call('XTRIM', stream, 'MINID', keep)
return acked
"""


async def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the consumer group (from id 0, so nothing queued earlier is skipped)."""
    try:
        await client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Worker:
    def __init__(
        self, config: TranscriberConfig, client: redis.Redis, model: SpeechModel, metrics: TranscriberMetrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.redis = client
        self.model = model
        self.stream = keys.segment_stream(config.name)
        self.partials = keys.partials_stream(config.name)
        self.files = keys.file_stream(config.name)
        self.dead = keys.dead_letter_stream(config.name)
        # The live streams each round reads, by role, finals first; and the file lane, if served.
        served = [stream for stream in (self.stream, self.partials) if self._serves(stream)]
        self.reads: dict[Any, Any] = dict.fromkeys(served, ">")
        self.file_reads: dict[Any, Any] = {self.files: ">"}
        background = config.role == "partials"
        self.file_batch = 1 if background else config.file_batch
        # A finals transcriber takes files only while the pool's live key is gone; the partials
        # one, in the background, whenever no partial waits. Each stamps the key as it reads.
        self.files_in_pauses = not background and config.file_idle_s > 0
        self.live_key = keys.live_key(config.name)
        self.live_key_ms = round(config.file_idle_s * 1000)
        self.ack_and_trim = client.register_script(ACK_AND_TRIM)

    def _serves(self, stream: str) -> bool:
        """Role ``finals`` serves finals and files, ``partials`` partials and files, ``all`` all."""
        return (
            self.config.role == "all"
            or stream == self.files
            or (self.config.role == "partials") == (stream == self.partials)
        )

    async def _files_now(self) -> dict[Any, Any]:
        """The file lane to read this round: none while the pool read a live entry too recently."""
        if self.files_in_pauses and await self.redis.exists(self.live_key):
            return {}
        return self.file_reads

    async def run(self, stop: asyncio.Event) -> None:
        await self._ensure_groups()
        async with asyncio.TaskGroup() as tasks:
            # Beside the consume loop: restarted when it fails, never ending the loop.
            heartbeat = tasks.create_task(supervise("heartbeat", self._heartbeat, self.metrics.task_restarts))
            log.info(
                "consumer %s serving %r (%s) from %s",
                self.config.consumer,
                self.config.name,
                self.config.role,
                ", ".join([*self.reads, *self.file_reads]),
            )
            backoff = Backoff()
            while not stop.is_set():
                try:
                    await self._round()
                    backoff.reset()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    # Unacknowledged entries stay pending in the group; nothing is lost.
                    await backoff.wait(stop, f"Redis unreachable ({exc})")
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("consumer group gone (Redis restarted?); creating it again")
                    await self._ensure_groups()
            heartbeat.cancel()
        with contextlib.suppress(redis.RedisError):  # no longer serving; else it expires
            await self.redis.delete(keys.consumer_key(self.config.name, self.config.consumer))

    async def _ensure_groups(self) -> None:
        for stream in (self.stream, self.partials, *self.file_reads):
            await ensure_group(self.redis, stream)

    async def _heartbeat(self) -> None:
        """Keep this consumer's readiness key and the pool's alive key fresh, and the backlog
        gauges current. The first beat comes as serving starts."""
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                ready = keys.consumer_key(self.config.name, self.config.consumer)
                await self.redis.set(ready, self.config.role, px=ALIVE_TTL_MS)
                if self._serves(self.stream):  # the ingest refuses sessions while no one serves finals
                    alive = keys.alive_key(self.config.name)
                    await self.redis.set(alive, self.config.consumer, px=ALIVE_TTL_MS)
                self.metrics.stream_length.labels(self.config.name).set(await self.redis.xlen(self.stream))
                group = keys.our_group(await self.redis.xinfo_groups(self.stream))
                if group is not None:
                    lag = math.nan if group["lag"] is None else group["lag"]
                    self.metrics.stream_pending.labels(self.config.name).set(group["pending"])
                    self.metrics.stream_lag.labels(self.config.name).set(lag)
                length = await self.redis.xlen(self.files)
                self.metrics.file_stream_length.labels(self.config.name).set(length)
                group = keys.our_group(await self.redis.xinfo_groups(self.files))
                if group is not None:
                    self.metrics.file_stream_pending.labels(self.config.name).set(group["pending"])
            if self.config.device == "cuda" and self.config.backend == "transformers":
                import torch  # loaded already by the transformers backend

                self.metrics.gpu_memory.set(torch.cuda.memory_allocated())
            await asyncio.sleep(HEARTBEAT_S)

    async def _round(self) -> None:
        """Serve the first lane with work, live before files (the module's docstring)."""
        if self._serves(self.stream) and await self._reclaim(self.stream, self.config.max_batch):
            return
        finals, partials = await self._read_batch()
        files: list[RawEntry] = []
        if not finals and not partials:
            file_reads = await self._files_now()
            if file_reads:
                if await self._reclaim(self.files, self.file_batch):
                    return
                files = (await self._read(file_reads, self.file_batch, None)).get(self.files, [])
            if not files:
                finals, partials, files = await self._wait_for_any(file_reads)
        if (finals or partials) and self.live_key_ms:
            await self.redis.set(self.live_key, self.config.consumer, px=self.live_key_ms)
        if finals:
            await self._process(self.stream, finals)
        if partials:
            # Finals first: partials read beside a final are stale by the time it is done.
            await self._process_partials(partials, stale=bool(finals))
        if files:
            await self._process(self.files, files)

    async def _reclaim(self, stream: str, count: int) -> bool:
        """Process up to ``count`` entries of ``stream`` that another consumer left pending for
        ``claim_idle_ms``; whether there were any."""
        claimed: Any = await self.redis.xautoclaim(
            stream,
            keys.GROUP,
            self.config.consumer,
            min_idle_time=self.config.claim_idle_ms,
            start_id="0-0",
            count=count,
        )
        entries: list[RawEntry] = [e for e in claimed[1] if e[1]]  # deleted entries come back empty
        if entries:
            await self._process(stream, await self._retire_exhausted(entries, stream))
        return bool(entries)

    async def _read(
        self, streams: dict[Any, Any], count: int, block: int | None
    ) -> dict[str, list[RawEntry]]:
        """New entries of ``streams``, up to ``count`` from each; ``block``: wait up to that many
        ms for the first (None: not at all)."""
        reply: Any = await self.redis.xreadgroup(
            keys.GROUP, self.config.consumer, streams, count=count, block=block
        )
        return {name.decode(): got for name, got in reply or []}

    async def _read_batch(self) -> tuple[list[RawEntry], list[RawEntry]]:
        """New live (final, partial) entries, up to ``max_batch`` each, without waiting for the
        first; see ``_fill`` for a final's batch."""
        read = await self._read(self.reads, self.config.max_batch, None)
        return await self._fill(read.get(self.stream, [])), read.get(self.partials, [])

    async def _wait_for_any(
        self, file_reads: dict[Any, Any]
    ) -> tuple[list[RawEntry], list[RawEntry], list[RawEntry]]:
        """(final, partial, file) entries: nothing waits anywhere, so one read of every served
        stream (the file lane if ``file_reads`` has it) waits up to BLOCK_MS for the first. Its
        COUNT holds for each stream, so with the file lane among them it is the file batch (a
        final's batch is then filled by ``_fill``)."""
        count = self.config.max_batch
        if file_reads:
            count = min(count, self.file_batch)
        read = await self._read({**self.reads, **file_reads}, count, BLOCK_MS)
        finals = await self._fill(read.get(self.stream, []))
        return finals, read.get(self.partials, []), read.get(self.files, [])

    async def _fill(self, finals: list[RawEntry]) -> list[RawEntry]:
        """Once a final segment is there, keep its batch open for at most ``batch_wait_ms`` (up to
        ``max_batch``), so that segments of sessions that stop talking at about the same time
        share one batch.

        Default 10 ms, from bench/backends.py on the 2-core CPU: there a batch costs about as
        much per segment as its segments one by one (whisper-base, 2 threads, s/segment at batch
        1/4/8: CTranslate2 int8 0.80/0.78/0.81, transformers fp32 1.09/0.99/0.95), so waiting
        for a batch to fill buys little throughput and costs latency; 10 ms is ~1 % of one
        segment's model time. Under load a backlog fills batches without any wait. On a GPU a
        batch of 4-16 costs little more than one segment: raise it there (say 30-50 ms).
        """
        max_batch = self.config.max_batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.batch_wait_ms / 1000
        while finals and len(finals) < max_batch:
            left_ms = int((deadline - loop.time()) * 1000)
            if left_ms < 1:  # block=0 would mean "forever"
                break
            more = await self._read({self.stream: ">"}, max_batch - len(finals), left_ms)
            finals += more.get(self.stream, [])
        return finals

    async def _process_partials(self, raw: list[RawEntry], stale: bool) -> None:
        """Transcribe the newest fresh partial request of each session; drop the rest.
        Partials are never retried: a lost one is replaced by the next, or by the final."""
        newest: dict[str, Entry] = {}
        if not stale:
            now = time.time()
            for entry_id, fields in raw:
                try:
                    job = SegmentJob.from_fields(fields)
                except ValueError:
                    continue
                if now - job.enqueued_at <= PARTIAL_MAX_AGE_S:
                    newest[job.session] = Entry(entry_id, job)
        entries = list(newest.values())
        listening = await self._listening({entry.job.session for entry in entries})
        entries = [entry for entry in entries if entry.job.session in listening]
        await self._finish(self.partials, await self._transcribe(entries), [entry_id for entry_id, _ in raw])

    async def _retire_exhausted(self, entries: list[RawEntry], stream: str | None = None) -> list[RawEntry]:
        """Dead-letter reclaimed entries of ``stream`` (default: the finals') delivered more than
        ``max_attempts`` times; return the rest."""
        stream = stream or self.stream
        # One exact XPENDING per entry: a range from the smallest to the largest id would also
        # list other consumers' entries in between, and could be cut short by its count.
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(stream, keys.GROUP, min=entry_id, max=entry_id, count=1)
            replies: list[Any] = await pipe.execute()
        deliveries = {p["message_id"]: p["times_delivered"] for reply in replies for p in reply}
        keep = []
        for entry_id, fields in entries:
            attempts = deliveries.get(entry_id, 1)
            if attempts <= self.config.max_attempts:
                log.info("reclaimed entry %s (delivery %d)", entry_id.decode(), attempts)
                self.metrics.reclaimed.labels(self.config.name).inc()
                keep.append((entry_id, fields))
            else:
                await self._dead_letter(
                    stream, entry_id, fields, f"gave up after {attempts - 1} failed attempts"
                )
        return keep

    async def _dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str
    ) -> None:
        log.error("entry %s of %s dead-lettered: %s", entry_id.decode(), stream, reason)
        self.metrics.dead_lettered.labels(self.config.name).inc()
        self.metrics.segments.labels(self.config.name, "error").inc()
        async with self.redis.pipeline(transaction=True) as pipe:
            dead: dict[Any, Any] = {
                **fields,
                b"reason": reason.encode(),
                b"entry": entry_id,
                b"stream": stream,
            }
            pipe.xadd(self.dead, dead, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            try:
                job = SegmentJob.from_fields(fields)
                for segment in job.segments:  # each segment of a pack is told
                    error = SegmentResult(
                        job.session,
                        segment,
                        "error",
                        reason=f"segment could not be transcribed: {reason}",
                        eager=job.eager,
                        channel=job.channel,
                    )
                    pipe.publish(keys.result_channel(job.session), error.to_json())
            except ValueError:
                pass  # malformed: nobody to tell
            await self.ack_and_trim([stream], [keys.GROUP, entry_id], client=pipe)
            await pipe.execute()

    async def _process(self, stream: str, raw: list[RawEntry]) -> None:
        """Transcribe the final or file entries ``raw`` of ``stream``, publish, acknowledge."""
        entries: list[Entry] = []
        for entry_id, fields in raw:
            try:
                entries.append(Entry(entry_id, SegmentJob.from_fields(fields)))
            except ValueError as exc:
                await self._dead_letter(stream, entry_id, fields, str(exc))
        listening = await self._listening({entry.job.session for entry in entries})
        gone = [entry.id for entry in entries if entry.job.session not in listening]
        entries = [entry for entry in entries if entry.job.session in listening]
        if gone:
            log.info("skipped %d segment(s) of sessions whose client is gone", len(gone))
            self.metrics.skipped.labels(self.config.name).inc(len(gone))
        results = await self._transcribe(entries)
        if stream == self.files:
            self.metrics.file_segments.labels(self.config.name).inc(sum(map(len, results.values())))
        # A failed entry stays pending, to be reclaimed and retried.
        await self._finish(stream, results, gone + list(results))

    async def _transcribe(self, entries: list[Entry]) -> dict[bytes, list[SegmentResult]]:
        """One batch through the model, off the event loop: each entry's results (one per
        segment it answers); failed entries are left out."""
        if not entries:
            return {}
        return await asyncio.to_thread(transcribe, self.model, entries, self.metrics)

    async def _finish(
        self, stream: str, results: dict[bytes, list[SegmentResult]], done: list[bytes]
    ) -> None:
        """Publish the results, then acknowledge the entries that are done and trim the stream."""
        if not done:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for result in (result for answers in results.values() for result in answers):
                pipe.publish(keys.result_channel(result.session), result.to_json())
            await self.ack_and_trim([stream], [keys.GROUP, *done], client=pipe)
            await pipe.execute()

    async def _listening(self, sessions: set[str]) -> set[str]:
        """The sessions whose ingest still listens on their result channel."""
        if not sessions:
            return set()
        counts: Any = await self.redis.pubsub_numsub(*(keys.result_channel(s) for s in sessions))
        prefix = keys.result_channel("")
        return {channel.decode()[len(prefix) :] for channel, count in counts if count}


async def run(config: TranscriberConfig, model: SpeechModel) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    client = await connect_redis(config.redis_url, stop)
    registry = metrics.new_registry()
    worker_metrics = metrics.TranscriberMetrics(registry, config.name)
    metrics.serve(registry, config.metrics_port)
    try:
        await Worker(config, client, model, worker_metrics).run(stop)
    finally:
        await client.aclose()
    log.info("consumer %s stopped", config.consumer)
