"""A file's segments packed into longer windows: sans-I/O.

Whisper decodes a window of up to 30 s at once, and most of a segment's cost is paid per window
(the encoder's pass, the decoder's start), not per second of speech. A live segment cannot wait
for the next one, but an uploaded file's can: consecutive segments of one channel are joined,
``gap_s`` of silence between them, into packs of at most ``limit_s``, and each pack is one job
whose ``parts`` say where each segment lies in it. The transcriber answers a pack with one result
per part (its words split the text), so the segments, their numbers and their times are what
they were without packing. A segment longer than the limit is a pack of its own; partial and
eager jobs are never packed.
"""

from __future__ import annotations

from dataclasses import replace

from services.protocol import MODEL_RATE, Part, SegmentJob

BYTES_PER_S = 2 * MODEL_RATE


def gap_bytes(gap_s: float) -> int:
    """The PCM bytes of ``gap_s`` of silence (whole samples)."""
    return 2 * round(gap_s * MODEL_RATE)


def pack(jobs: list[SegmentJob], gap_s: float) -> SegmentJob:
    """One job for ``jobs`` (consecutive final segments of one channel, in order): their audio
    joined by ``gap_s`` of silence; one job alone is returned as it is."""
    if len(jobs) == 1:
        return jobs[0]
    gap = bytes(gap_bytes(gap_s))
    pcm, parts, offset = bytearray(), [], 0
    for job in jobs:
        if pcm:
            pcm += gap
            offset += len(gap)
        parts.append(Part(job.segment, job.start, job.end, offset / BYTES_PER_S, len(job.pcm) / BYTES_PER_S))
        pcm += job.pcm
        offset += len(job.pcm)
    first, last = jobs[0], jobs[-1]
    return replace(
        first,
        pcm=bytes(pcm),
        end=last.end,
        endpoint_at=last.endpoint_at,
        enqueued_at=last.enqueued_at,
        words=any(job.words for job in jobs),
        parts=tuple(parts),
    )


class Packer:
    """Holds each channel's segments until the next would not fit ``limit_s``; ``add`` and
    ``flush`` return the packs ready to queue, in order. ``held`` segments wait in it."""

    def __init__(self, limit_s: float, gap_s: float) -> None:
        self.limit = round(limit_s * BYTES_PER_S)
        self.gap_s = gap_s
        self.gap = gap_bytes(gap_s)
        self._open: dict[int, list[SegmentJob]] = {}  # by channel

    @property
    def held(self) -> int:
        return sum(len(jobs) for jobs in self._open.values())

    def add(self, jobs: list[SegmentJob]) -> list[SegmentJob]:
        ready = []
        for job in jobs:
            if job.partial or job.eager:
                ready.append(job)
                continue
            held = self._open.setdefault(job.channel, [])
            if held and self._size(held) + self.gap + len(job.pcm) > self.limit:
                ready.append(pack(held, self.gap_s))
                held.clear()
            held.append(job)
            if self._size(held) + self.gap >= self.limit:  # nothing more fits
                ready.append(pack(held, self.gap_s))
                held.clear()
        return ready

    def _size(self, held: list[SegmentJob]) -> int:
        return sum(len(job.pcm) for job in held) + self.gap * (len(held) - 1)

    def flush(self) -> list[SegmentJob]:
        """Every channel's held segments, as packs."""
        ready = [pack(held, self.gap_s) for held in self._open.values() if held]
        self._open.clear()
        return ready
