"""One batch through the model: jobs in, results out (blocking; runs off the event loop)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from services.audio import pcm16_to_float
from services.metrics import TranscriberMetrics
from services.protocol import SegmentJob, SegmentResult
from services.transcriber.guard import judge
from services.transcriber.interface import SpeechModel, Transcript
from services.transcriber.packs import pieces

log = logging.getLogger("transcriber.batch")


@dataclass(frozen=True)
class Entry:
    """A stream entry and the job it carries."""

    id: bytes
    job: SegmentJob


def transcribe(
    model: SpeechModel, entries: list[Entry], metrics: TranscriberMetrics
) -> dict[bytes, list[SegmentResult]]:
    """Transcribe ``entries`` in one batch; if the batch fails, each entry alone.

    Returns the results of each entry that succeeded: one, or one per part of a pack; an entry
    missing from the result failed and stays pending, to be retried (and dead-lettered after too
    many tries).
    """
    try:
        return _run(model, entries, metrics)
    except Exception:
        metrics.failures.labels(metrics.model).inc()
        if len(entries) == 1:
            log.exception("session %s segment %d failed", entries[0].job.session, entries[0].job.segment)
            return {}
        log.exception("batch of %d failed; retrying one by one", len(entries))
    results: dict[bytes, list[SegmentResult]] = {}
    for entry in entries:
        results.update(transcribe(model, [entry], metrics))
    return results


def _run(
    model: SpeechModel, entries: list[Entry], metrics: TranscriberMetrics
) -> dict[bytes, list[SegmentResult]]:
    started = time.time()
    clips = [pcm16_to_float(entry.job.pcm) for entry in entries]
    jobs = [entry.job for entry in entries]
    # A pack's words are timed whether asked or not: they split its text into its segments.
    timed = [job.words or bool(job.parts) for job in jobs]
    transcripts = model.transcribe(clips, timed, [job.prompt for job in jobs])
    finished = time.time()
    audio = sum(entry.job.duration for entry in entries)
    name = metrics.model
    metrics.batch_seconds.labels(name).observe(finished - started)
    metrics.batch_size.labels(name).observe(len(entries))
    metrics.audio_seconds.labels(name).inc(audio)
    if audio > 0:
        metrics.realtime_factor.labels(name).observe((finished - started) / audio)
    timings = {"model_start": started, "model_end": finished, "batch": float(len(entries))}
    results = {}
    for entry, transcript in zip(entries, transcripts, strict=True):
        job = entry.job
        answers = [
            _result(job, segment, start, duration, piece, timings)
            for segment, start, duration, piece in pieces(job, transcript)
        ]
        for result in answers:
            metrics.segments.labels(name, "partial" if job.partial else result.outcome).inc()
        log.info(
            "session %s %s %s: %.2f s audio in %.2f s (batch %d, no-speech %.2f): %r%s",
            job.session,
            "partial" if job.partial else "segment" if not job.parts else "pack",
            "-".join(str(n) for n in sorted({job.segments[0], job.segments[-1]})),
            job.duration,
            finished - started,
            len(entries),
            transcript.no_speech_prob,
            transcript.text[:80],
            "".join(f" {r.segment} dropped ({r.reason})" for r in answers if r.reason),
        )
        results[entry.id] = answers
    return results


def _result(
    job: SegmentJob,
    segment: int,
    start: float,
    duration: float,
    transcript: Transcript,
    timings: dict[str, float],
) -> SegmentResult:
    """What the client is told of ``segment`` (all of ``job``, or one part of a pack): judged,
    its words (when asked) in stream time."""
    verdict = judge(transcript.text, transcript.no_speech_prob)
    job_timings = {"endpoint_at": job.endpoint_at, "enqueued_at": job.enqueued_at, "audio": duration}
    return SegmentResult(
        job.session,
        segment,
        "text" if verdict.text else "empty",
        verdict.text,
        verdict.reason,
        job_timings | timings,
        partial=job.partial,
        eager=job.eager,
        channel=job.channel,
        words=[word.shifted(start) for word in transcript.words] if verdict.text and job.words else [],
        confidence=confidence(transcript) if verdict.text else None,
    )


def confidence(transcript: Transcript) -> float | None:
    """A segment's confidence: the mean of its words' (when they were timed)."""
    if not transcript.words:
        return None
    return round(math.fsum(word.probability for word in transcript.words) / len(transcript.words), 3)
