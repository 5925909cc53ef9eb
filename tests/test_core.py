"""A session's decisions, in-process: frames, results and the clock in; jobs and events out.
No socket, no Redis, no model (services/ingest/core/channel.py)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from services import metrics
from services.ingest.config import parse_args
from services.ingest.core.channel import SessionCore
from services.ingest.core.channels import Channels
from services.ingest.protocols import native
from services.ingest.protocols.native import Native
from services.metrics import IngestMetrics
from services.protocol import (
    MODEL_RATE,
    EagerEnd,
    ErrorEvent,
    Final,
    Partial,
    SegmentJob,
    SegmentResult,
    ServerEvent,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
    parse_query,
)
from tests.test_segmenter import loud, silence, tone_pcm

FRAME_S = 0.02


class Clock:
    """Wall time that advances with the audio fed, as a real-time client's would."""

    def __init__(self) -> None:
        self.now = 1_000.0


def shown(core: SessionCore | Channels) -> list[ServerEvent]:
    """The events our protocol sends (``native.shown``), partials without their spans (a test of
    its own checks those)."""
    events = [e for e in core.events_to_send() if native.shown(e)]
    return [replace(e, start=0.0, end=0.0) if isinstance(e, Partial) else e for e in events]


def make_core(*flags: str, rate: int = 16000, partials: bool = False) -> tuple[SessionCore, Clock]:
    config = parse_args(["--silence-ms", "300", "--min-speech-ms", "200", "--eager-ms", "0", *flags])
    registry = metrics.new_registry()
    clock = Clock()
    core = SessionCore("s1", "swift", rate, partials, config, IngestMetrics(registry), clock.now, vad=loud)
    return core, clock


def feed(core: SessionCore, clock: Clock, pcm: bytes, rate: int = 16000) -> list[SegmentJob]:
    """Feed ``pcm`` in 20 ms frames; return every job the core asked for."""
    step = int(rate * FRAME_S) * 2
    jobs: list[SegmentJob] = []
    for i in range(0, len(pcm), step):
        clock.now += FRAME_S
        core.audio(pcm[i : i + step], clock.now)
        if core.tentative is not None:
            core.guess(clock.now)
        jobs += core.jobs_to_queue()
    return jobs


def utterances(*seconds: float, rate: int = 16000) -> bytes:
    pcm = silence(0.5, rate)
    for s in seconds:
        pcm += tone_pcm(s, rate) + silence(0.6, rate)
    return pcm


def text(job: SegmentJob, words: str = "hello") -> SegmentResult:
    """A transcriber's answer to ``job`` (echoing its eager token, as the transcriber does)."""
    timings = {"enqueued_at": 1.0, "model_start": 1.1, "model_end": 1.3}
    return SegmentResult("s1", job.segment, "text", words, timings=timings, eager=job.eager)


def test_segments_become_jobs_and_results_are_released_in_segment_order() -> None:
    core, clock = make_core(rate=8000)
    jobs = feed(core, clock, utterances(1.0, 0.8, rate=8000), rate=8000)
    assert [job.segment for job in jobs] == [0, 1]
    assert not any(job.partial or job.eager for job in jobs)
    for job in jobs:  # resampled to the model's 16 kHz: two bytes a sample
        assert len(job.pcm) == pytest.approx((job.end - job.start) * MODEL_RATE * 2, abs=2 * 16 * 30)
    core.result(text(jobs[1], "second"), clock.now)
    assert shown(core) == []  # held until segment 0 is answered
    core.result(text(jobs[0], "first"), clock.now)
    events = shown(core)
    assert [(type(e), getattr(e, "text", None)) for e in events] == [(Final, "first"), (Final, "second")]
    core.result(text(jobs[0], "again"), clock.now)  # a duplicate delivery
    assert shown(core) == []
    assert not core.finished
    core.end_of_audio(clock.now)
    assert core.finished and core.jobs_to_queue() == []


def test_end_of_audio_closes_the_open_segment_and_waits_for_its_answer() -> None:
    core, clock = make_core()
    feed(core, clock, silence(0.5, 16000) + tone_pcm(1.0, 16000))
    core.end_of_audio(clock.now)
    (job,) = core.jobs_to_queue()
    assert core.eof and not core.finished
    core.result(SegmentResult("s1", job.segment, "empty", reason="no_speech"), clock.now)
    assert shown(core) == [] and core.finished  # an empty result sends nothing


def test_an_overdue_segment_becomes_an_error_and_unblocks_the_next() -> None:
    core, clock = make_core("--result-timeout", "5")
    jobs = feed(core, clock, utterances(0.8, 0.8))
    core.result(text(jobs[1]), clock.now)
    deadline = core.next_deadline()
    assert deadline is not None and deadline > clock.now
    core.expire(deadline - 0.01)
    assert shown(core) == []
    core.expire(deadline)
    events = shown(core)
    assert [type(e) for e in events] == [ErrorEvent, Final]
    assert isinstance(events[0], ErrorEvent) and events[0].code == "timeout" and events[0].segment == 0


def test_partials_are_asked_for_while_speech_goes_on_and_shown_only_while_it_is_open() -> None:
    core, clock = make_core("--partial-ms", "400", partials=True)
    jobs = feed(core, clock, silence(0.5, 16000) + tone_pcm(2.0, 16000))
    asks = [job for job in jobs if job.partial]
    # Every 0.4 s of the open segment (which starts with its pre-roll), none before speech.
    assert all(job.segment == 0 and job.start == asks[0].start for job in asks)
    spoken = [job.end - job.start for job in asks]
    assert len(asks) == 5 and 0.4 <= spoken[0] < 0.46  # the VAD's 30 ms frames round it up
    assert all(0.4 <= b - a < 0.46 for a, b in itertools.pairwise(spoken))
    core.result(SegmentResult("s1", 0, "text", "hel", partial=True), clock.now)
    assert shown(core) == [Partial("hel", 0)]
    # A pause: no partial asked for while it lasts, and the segment then closes.
    jobs = feed(core, clock, silence(0.6, 16000))
    assert [job.partial for job in jobs] == [False]
    core.result(SegmentResult("s1", 0, "text", "hello th", partial=True), clock.now)  # stale
    assert shown(core) == []
    core.result(text(jobs[0], "hello there"), clock.now)
    (final,) = shown(core)
    assert isinstance(final, Final) and (final.text, final.segment) == ("hello there", 0)
    assert (final.start, final.end) == (jobs[0].start, jobs[0].end)


def test_no_partials_for_sessions_that_did_not_ask() -> None:
    core, clock = make_core("--partial-ms", "400", partials=False)
    assert not [job for job in feed(core, clock, utterances(2.0)) if job.partial]


def test_a_segment_dropped_after_its_partials_still_gets_an_empty_final_and_its_number() -> None:
    core, clock = make_core("--partial-ms", "200", "--min-speech-ms", "1500", partials=True)
    feed(core, clock, silence(0.5, 16000) + tone_pcm(0.5, 16000))
    core.result(SegmentResult("s1", 0, "text", "uh", partial=True), clock.now)
    assert shown(core) == [Partial("uh", 0)]
    jobs = feed(core, clock, silence(0.6, 16000))  # too short: dropped
    assert [job for job in jobs if not job.partial] == []
    events = shown(core)
    assert (
        len(events) == 1 and isinstance(events[0], Final) and (events[0].text, events[0].segment) == ("", 0)
    )
    jobs = feed(core, clock, tone_pcm(2.0, 16000) + silence(0.6, 16000))
    assert [job.segment for job in jobs if not job.partial] == [1]  # the next segment goes on from 1


def test_an_eager_guess_confirmed_by_the_pause_is_the_final_and_no_second_job_is_queued() -> None:
    core, clock = make_core("--silence-ms", "600", "--eager-ms", "250")
    jobs = feed(core, clock, silence(0.5, 16000) + tone_pcm(1.0, 16000) + silence(0.35, 16000))
    (guess,) = jobs
    assert guess.eager and guess.segment == 0
    core.result(text(guess, "early"), clock.now)
    assert shown(core) == []  # held: the pause is not confirmed yet
    assert feed(core, clock, silence(0.5, 16000)) == []  # confirmed: the guess's job was this segment
    events = shown(core)
    assert len(events) == 1 and isinstance(events[0], Final) and events[0].text == "early"
    assert (events[0].start, events[0].end) == (guess.start, guess.end)


def test_a_declined_guess_leaves_the_segment_to_be_queued_when_it_closes() -> None:
    core, clock = make_core("--silence-ms", "600", "--eager-ms", "250")
    pcm, step, declined = utterances(1.0) + silence(0.5, 16000), 320 * 2, 0
    for i in range(0, len(pcm), step):
        clock.now += FRAME_S
        core.audio(pcm[i : i + step], clock.now)
        if core.tentative is not None:
            core.decline_guess()  # the backlog is too long
            declined += 1
        for job in core.jobs_to_queue():
            assert not job.eager and job.segment == 0
    assert declined == 1


def test_a_guess_whose_speech_resumed_is_wasted_and_the_segment_is_queued_anew() -> None:
    core, clock = make_core("--silence-ms", "600", "--eager-ms", "250")
    pcm = silence(0.5, 16000) + tone_pcm(1.0, 16000) + silence(0.35, 16000) + tone_pcm(0.5, 16000)
    jobs = feed(core, clock, pcm + silence(0.9, 16000))
    assert [bool(job.eager) for job in jobs] == [True, False]
    core.result(text(jobs[0], "half"), clock.now)
    core.result(text(jobs[1], "whole"), clock.now)
    events = shown(core)
    assert [e.text for e in events if isinstance(e, Final)] == ["whole"]


def test_the_session_length_limit_ends_it_like_end_of_audio_with_an_error() -> None:
    core, clock = make_core("--max-session-s", "2")
    jobs = feed(core, clock, silence(0.5, 16000) + tone_pcm(2.0, 16000))
    assert core.eof and core.ending is not None and core.ending.code == "session_too_long"
    assert [job.segment for job in jobs] == [0]  # what was said so far is still transcribed


def test_a_sent_final_is_measured_whole_and_in_parts() -> None:
    config = parse_args(["--silence-ms", "300", "--eager-ms", "0"])
    registry = metrics.new_registry()
    core = SessionCore("s1", "swift", 16000, False, config, IngestMetrics(registry), 0.0, vad=loud)
    clock = Clock()
    jobs = feed(core, clock, utterances(1.0))
    core.result(text(jobs[0]), clock.now)
    events: list[ServerEvent] = shown(core)
    core.sent(events[0], 1.5)
    sample = registry.get_sample_value
    assert sample("stt_e2e_latency_seconds_count", {"model": "swift"}) == 1
    assert sample("stt_queue_wait_seconds_sum", {"model": "swift"}) == pytest.approx(0.1)
    assert sample("stt_segment_model_seconds_sum", {"model": "swift"}) == pytest.approx(0.2)
    assert sample("stt_relay_seconds_sum", {"model": "swift"}) == pytest.approx(0.2)
    assert sample("stt_segments_enqueued_total", {"model": "swift"}) == 1


def test_speech_is_told_as_it_starts_and_ends_and_every_segment_is_answered() -> None:
    """What protocols other than ours are told (Deepgram's SpeechStarted, OpenAI's speech_started,
    speech_stopped and committed items): the start of speech, its end as a segment (or as
    nothing, when it was noise), why it ended, and a final for every segment, silent when
    nothing was said."""
    core, clock = make_core("--partial-ms", "400", "--min-speech-ms", "500", partials=True)
    jobs = feed(core, clock, silence(0.5, 16000) + tone_pcm(1.0, 16000))
    started = core.events_to_send()
    assert len(started) == 1 and isinstance(started[0], SpeechStarted)
    asked = [job for job in jobs if job.partial][-1]
    core.result(SegmentResult("s1", 0, "text", "hel", partial=True), clock.now)
    (partial,) = core.events_to_send()
    assert isinstance(partial, Partial) and (partial.start, partial.end) == (asked.start, asked.end)
    assert started[0].at == asked.start  # where the segment starts: its pre-roll included
    core.finalize(clock.now)
    (closed,) = [job for job in core.jobs_to_queue() if not job.partial]
    (ended,) = core.events_to_send()
    assert isinstance(ended, SpeechEnded) and (ended.segment, ended.ended) == (0, "finalize")
    assert (ended.start, ended.end) == (closed.start, closed.end)
    core.result(text(closed), clock.now)
    (final,) = core.events_to_send()
    assert isinstance(final, Final) and final.ended == "finalize" and not final.silent
    # Speech that is too short to be speech: it started, and ended as no segment.
    feed(core, clock, tone_pcm(0.3, 16000) + silence(0.6, 16000))
    kinds = [(type(e), getattr(e, "segment", 0)) for e in core.events_to_send()]
    assert kinds == [(SpeechStarted, 0), (SpeechEnded, None)]
    # A segment with nothing said: answered all the same, silent (our protocol shows nothing).
    (job,) = [j for j in feed(core, clock, tone_pcm(1.0, 16000) + silence(0.6, 16000)) if not j.partial]
    core.events_to_send()
    core.result(SegmentResult("s1", job.segment, "empty", reason="noise"), clock.now)
    (empty,) = core.events_to_send()
    assert isinstance(empty, Final) and empty.silent and empty.ended == "silence" and not native.shown(empty)


def turn_events(core: SessionCore) -> list[tuple[str, str]]:
    """What a voice agent hears of turns: (kind, text)."""
    told: list[tuple[str, str]] = []
    for event in core.events_to_send():
        if isinstance(event, EagerEnd | Final):
            told.append((event.type, event.text))
        elif isinstance(event, TurnResumed | SpeechStarted):
            told.append((event.type, ""))
    return told


def test_a_guess_answered_before_its_pause_is_confirmed_is_told_early_and_then_resumed_or_final() -> None:
    """Flux's EagerEndOfTurn / TurnResumed / EndOfTurn: the guess's text is told as soon as it
    comes; speech after it says the turn resumed; a confirmed pause makes that text the final."""
    core, clock = make_core("--silence-ms", "600", "--eager-ms", "250")
    guesses = feed(core, clock, silence(0.5, 16000) + tone_pcm(1.0, 16000) + silence(0.3, 16000))
    (guess,) = [j for j in guesses if j.eager]
    core.result(text(guess, "half"), clock.now)  # the pause is not confirmed yet
    assert turn_events(core) == [("speech_started", ""), ("eager_end", "half")]
    jobs = feed(core, clock, tone_pcm(0.5, 16000))  # speech goes on
    assert turn_events(core) == [("turn_resumed", "")]
    jobs = feed(core, clock, silence(0.3, 16000))
    (second,) = [j for j in jobs if j.eager]
    core.result(text(second, "whole"), clock.now)
    assert turn_events(core) == [("eager_end", "whole")]
    feed(core, clock, silence(0.5, 16000))  # confirmed: the guess is the final, nothing resumed
    assert turn_events(core) == [("final", "whole")]
    params = parse_query("turns=true")
    assert params.turns and not parse_query("").turns
    eager = EagerEnd("whole", 0, 0.5, 1.5)
    assert native.shown(eager, turns=True) and not native.shown(eager)
    assert Native(turns=True).render(eager) == [eager.to_json()] and Native().render(eager) == []
