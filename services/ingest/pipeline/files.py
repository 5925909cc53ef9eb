"""An uploaded file as a session: its audio decoded in blocks (off the event loop), fed through
the same core as live audio (VAD, segments), its segments queued on the pool's file lane
(``keys.file_stream``, taken by transcribers only when no live segment waits), its finals
collected in order.

Its consecutive segments are packed into jobs of up to ``--file-pack-s`` of audio
(``services.ingest.core.packs``): a pack is decoded in one window and answered segment by
segment. A file is fed as fast as its jobs are answered, never faster: at most
``--file-window`` of them are queued and unanswered at once, so one long file neither fills the
lane nor holds more than a window of audio in memory. Partials and eager guesses are off (nobody
listens to them); its finals count in no live latency metric.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import redis.asyncio as redis
import soundfile
from scipy.signal import resample_poly

from services import keys
from services.ingest.config import IngestConfig
from services.ingest.core.channels import Channels
from services.ingest.core.packs import Packer
from services.ingest.pipeline.results import WAKE
from services.ingest.pipeline.session import ClientGone, Runner
from services.protocol import ErrorEvent, Final, ProtocolError, ServerEvent

RATES = (8000, 16000, 32000, 48000)  # what the VAD takes as is; any other rate is resampled
RESAMPLED_RATE = 16000
BLOCK_S = 10.0  # decoded (and resampled) at a time, in a thread
FEED_S = 0.1  # fed to the core at a time: live clients' frame size, so the loop stays responsive
# Silence between the segments of a pack: about a pause between two sentences.
PACK_GAP_S = 1.0
RAW_SUBTYPES = {"linear16": "PCM_16", "mulaw": "ULAW", "alaw": "ALAW"}


class FileError(ProtocolError):
    """A file that cannot be transcribed; ``status`` is the HTTP status that says so."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.status = status


@dataclass(frozen=True)
class RawFormat:
    """Headerless audio: how to read it (Deepgram's ``encoding`` and ``sample_rate``)."""

    encoding: str
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True)
class Audio:
    """An opened upload: what the core is fed."""

    sound: soundfile.SoundFile
    rate: int  # fed to the core (the file's, or RESAMPLED_RATE)
    channels: int  # fed to the core: the file's with multichannel, else 1 (a downmix)
    source_channels: int
    duration: float


def open_audio(path: str, raw: RawFormat | None, keep_channels: bool, max_channels: int) -> Audio:
    """Open an upload (any format libsndfile reads, or ``raw``); FileError if it cannot be."""
    try:
        if raw is None:
            sound = soundfile.SoundFile(path)
        else:
            sound = soundfile.SoundFile(
                path,
                samplerate=raw.sample_rate,
                channels=raw.channels,
                subtype=RAW_SUBTYPES[raw.encoding],
                format="RAW",
            )
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise FileError("bad_audio", f"the audio cannot be decoded: {exc}") from None
    if sound.frames <= 0 or sound.samplerate <= 0:
        sound.close()
        raise FileError("bad_audio", "the file holds no audio")
    if keep_channels and sound.channels > max_channels:
        sound.close()
        raise FileError("bad_audio", f"{sound.channels} channels: {max_channels} at most are kept apart")
    rate = sound.samplerate if sound.samplerate in RATES else RESAMPLED_RATE
    channels = sound.channels if keep_channels else 1
    return Audio(sound, rate, channels, sound.channels, sound.frames / sound.samplerate)


def blocks(audio: Audio) -> Iterator[bytes]:
    """The audio as 16-bit PCM at ``audio.rate``, interleaved ``audio.channels``, BLOCK_S at a time.
    A file libsndfile finds truncated or corrupt part way ends where it can be read no further."""
    sound = audio.sound
    gcd = math.gcd(audio.rate, sound.samplerate)
    up, down = audio.rate // gcd, sound.samplerate // gcd
    try:
        for block in sound.blocks(
            blocksize=round(BLOCK_S * sound.samplerate), dtype="float32", always_2d=True
        ):
            samples = block if audio.channels > 1 else block.mean(axis=1, keepdims=True)
            if up != down:
                samples = resample_poly(samples, up, down, axis=0)
            yield (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise FileError("bad_audio", f"the audio cannot be decoded past a point: {exc}") from None
    finally:
        sound.close()


class FileSession(Runner):
    """One uploaded file through the pipeline. ``finals`` holds its finals once ``run`` returns;
    ``on_final`` (if given) is awaited with each as it comes (a stream of deltas); ``gone`` says
    whether the client has left (its file is then transcribed no further)."""

    def __init__(
        self,
        audio: Audio,
        core: Channels,
        config: IngestConfig,
        client: redis.Redis,
        results: asyncio.Queue[bytes],
        cold: bool,
        gone: Callable[[], bool],
        on_final: Callable[[Final], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(core, config, client, results, cold)
        self.stream = keys.file_stream(core.model)
        self.audio = audio
        self.gone = gone
        self.on_final = on_final
        self.finals: list[Final] = []
        self.failed: list[ErrorEvent] = []
        files = config.files
        self.packer = Packer(files.file_pack_s, PACK_GAP_S) if files.file_pack_s > 0 else None
        self.waiting: dict[tuple[int, int], int] = {}  # (channel, segment) -> its job's number
        self.parts_left: dict[int, int] = {}  # a queued job's number -> its segments unanswered
        self.jobs = 0  # jobs queued so far
        self.answered = asyncio.Event()

    async def _receive(self) -> None:
        core = self.core
        step = round(FEED_S * self.audio.rate) * 2 * self.audio.channels
        decoded = blocks(self.audio)
        while (block := await asyncio.to_thread(next, decoded, None)) is not None:
            for start in range(0, len(block), step):
                core.audio(block[start : start + step], time.time())
                await self._hand_on()
                if core.eof:
                    break
                await asyncio.sleep(0)  # live sessions' frames come in between
            if core.eof:
                break
        if not core.eof:
            core.end_of_audio(time.time())
        await self._hand_on()
        await self._ignore_until_done()

    async def _hand_on(self) -> None:
        """Queue what the core made (packed); wait while the file's window of jobs is full."""
        for channel in self.core.cores:
            if channel.tentative is not None:
                channel.decline_guess()
        jobs = self.core.jobs_to_queue()
        if self.packer is not None:
            jobs = self.packer.add(jobs)
            if self.core.eof:
                jobs += self.packer.flush()
        for job in jobs:
            self.parts_left[self.jobs] = len(job.segments)
            self.waiting.update(((job.channel, segment), self.jobs) for segment in job.segments)
            self.jobs += 1
        await self._queue(jobs)
        if self.core.eof or self.core.has_events:
            await self.results.put(WAKE)
        while len(self.parts_left) >= self.config.files.file_window:
            self.answered.clear()
            await self.answered.wait()
        if self.gone():
            raise ClientGone()

    async def _ignore_until_done(self) -> NoReturn:
        """All audio is in: the relay ends the session once every segment is answered."""
        while True:
            await asyncio.sleep(1.0)
            if self.gone():
                raise ClientGone()

    async def _send(self, event: ServerEvent) -> None:
        if isinstance(event, Final):
            self.finals.append(event)
            if self.on_final is not None and event.text.strip():
                await self.on_final(event)
            self._answered(event.channel, event.segment)
        elif isinstance(event, ErrorEvent) and event.segment is not None:
            self.failed.append(event)
            self._answered(event.channel, event.segment)

    def _answered(self, channel: int, segment: int) -> None:
        """One segment answered; its job is once all of its segments are."""
        job = self.waiting.pop((channel, segment), None)
        if job is None:
            return
        self.parts_left[job] -= 1
        if not self.parts_left[job]:
            del self.parts_left[job]
            self.answered.set()
