"""One batch through the model: jobs in, results out (blocking; runs off the event loop)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from services.audio import pcm16_to_float
from services.metrics import TranscriberMetrics
from services.protocol import Outcome, SegmentJob, SegmentResult
from services.transcriber.guard import judge
from services.transcriber.interface import SpeechModel, Transcript

log = logging.getLogger("transcriber.batch")


@dataclass(frozen=True)
class Entry:
    """A stream entry and the job it carries."""

    id: bytes
    job: SegmentJob


def transcribe(
    model: SpeechModel, entries: list[Entry], metrics: TranscriberMetrics
) -> dict[bytes, SegmentResult]:
    """Transcribe ``entries`` in one batch; if the batch fails, each entry alone.

    Returns a result per entry that succeeded; an entry missing from the result
    failed and stays pending, to be retried (and dead-lettered after too many tries).
    """
    try:
        return _run(model, entries, metrics)
    except Exception:
        metrics.failures.labels(metrics.model).inc()
        if len(entries) == 1:
            log.exception("session %s segment %d failed", entries[0].job.session, entries[0].job.segment)
            return {}
        log.exception("batch of %d failed; retrying one by one", len(entries))
    results: dict[bytes, SegmentResult] = {}
    for entry in entries:
        results.update(transcribe(model, [entry], metrics))
    return results


def _run(model: SpeechModel, entries: list[Entry], metrics: TranscriberMetrics) -> dict[bytes, SegmentResult]:
    started = time.time()
    clips = [pcm16_to_float(entry.job.pcm) for entry in entries]
    jobs = [entry.job for entry in entries]
    transcripts = model.transcribe(clips, [job.words for job in jobs], [job.prompt for job in jobs])
    finished = time.time()
    audio = sum(entry.job.duration for entry in entries)
    name = metrics.model
    metrics.batch_seconds.labels(name).observe(finished - started)
    metrics.batch_size.labels(name).observe(len(entries))
    metrics.audio_seconds.labels(name).inc(audio)
    if audio > 0:
        metrics.realtime_factor.labels(name).observe((finished - started) / audio)
    results = {}
    for entry, transcript in zip(entries, transcripts, strict=True):
        job = entry.job
        verdict = judge(transcript.text, transcript.no_speech_prob)
        timings = {
            "endpoint_at": job.endpoint_at,
            "enqueued_at": job.enqueued_at,
            "model_start": started,
            "model_end": finished,
            "batch": float(len(entries)),
            "audio": job.duration,
        }
        outcome: Outcome = "text" if verdict.text else "empty"
        results[entry.id] = SegmentResult(
            job.session,
            job.segment,
            outcome,
            verdict.text,
            verdict.reason,
            timings,
            partial=job.partial,
            eager=job.eager,
            channel=job.channel,
            words=[word.shifted(job.start) for word in transcript.words] if verdict.text else [],
            confidence=confidence(transcript) if verdict.text else None,
        )
        metrics.segments.labels(name, "partial" if job.partial else outcome).inc()
        log.info(
            "session %s %s %d: %.2f s audio in %.2f s (batch %d, no-speech %.2f): %r%s",
            job.session,
            "partial" if job.partial else "segment",
            job.segment,
            job.duration,
            finished - started,
            len(entries),
            transcript.no_speech_prob,
            transcript.text[:80],
            f" dropped ({verdict.reason})" if verdict.reason else "",
        )
    return results


def confidence(transcript: Transcript) -> float | None:
    """A segment's confidence: the mean of its words' (when they were timed)."""
    if not transcript.words:
        return None
    return round(math.fsum(word.probability for word in transcript.words) / len(transcript.words), 3)
