"""The VAD segmenter, bytes in and events out: no I/O, no model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from services.protocol import SAMPLE_RATES
from services.segmenter import Dropped, Event, Segment, Segmenter, SegmenterConfig, Tentative
from tools.speech import Speech

# A deterministic stand-in VAD for exact timing: a frame is speech when loud.
LOUD = 8000


def loud(frame: bytes) -> bool:
    return bool(np.abs(np.frombuffer(frame, "<i2")).mean() > LOUD / 2)


def tone_pcm(seconds: float, rate: int, amplitude: int = LOUD) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sign(np.sin(2 * np.pi * 200 * t))).astype("<i2").tobytes()


def silence(seconds: float, rate: int) -> bytes:
    return bytes(2 * int(seconds * rate))


def feed_all(seg: Segmenter, pcm: bytes, chunk: int) -> list[Event]:
    events: list[Event] = []
    for i in range(0, len(pcm), chunk):
        events += seg.feed(pcm[i : i + chunk])
    return events + seg.flush()


def test_one_utterance_with_pre_roll_and_hangover() -> None:
    rate = 16000
    config = SegmenterConfig(silence_ms=600, pre_roll_ms=300, post_roll_ms=200)
    pcm = silence(1.0, rate) + tone_pcm(2.0, rate) + silence(1.5, rate)
    events = feed_all(Segmenter(rate, config, vad=loud), pcm, 320)
    assert len(events) == 1
    seg = events[0]
    assert isinstance(seg, Segment)
    assert seg.reason == "silence"
    assert seg.start == pytest.approx(1.0 - 0.3, abs=0.031)  # pre-roll before the first voiced frame
    assert seg.speech_end == pytest.approx(3.0, abs=0.031)
    assert seg.end == pytest.approx(3.0 + 0.2, abs=0.031)  # post-roll kept after the last voiced frame
    assert len(seg.pcm) == round((seg.end - seg.start) * rate) * 2


def test_a_pause_is_announced_tentatively_with_the_bounds_of_the_segment_it_closes() -> None:
    rate = 16000
    config = SegmenterConfig(silence_ms=600, post_roll_ms=180, eager_ms=240)
    seg = Segmenter(rate, config, vad=loud)
    # A 0.3 s pause inside the utterance (past eager_ms, short of silence_ms), then the real end.
    pcm = silence(1.0, rate) + tone_pcm(1.0, rate) + silence(0.3, rate) + tone_pcm(0.5, rate)
    events = feed_all(seg, pcm + silence(1.5, rate), 320)
    assert [type(e) for e in events] == [Tentative, Tentative, Segment]
    first, second, final = events
    assert isinstance(first, Tentative) and isinstance(second, Tentative) and isinstance(final, Segment)
    assert first.segment.end == pytest.approx(2.0 + 0.18, abs=0.031)  # speech resumed: not the final
    assert (second.segment.start, second.segment.end) == (final.start, final.end)
    assert second.segment.pcm == final.pcm
    # Announced once the pause lasted eager_ms: the 1.5 s of silence fed so far minus what followed.
    assert final.end - final.speech_end == pytest.approx(0.18, abs=0.031)


def test_no_tentative_for_what_would_be_dropped() -> None:
    rate = 16000
    config = SegmenterConfig(silence_ms=600, min_speech_ms=300, eager_ms=240)
    events = feed_all(Segmenter(rate, config, vad=loud), tone_pcm(0.27, rate) + silence(1.0, rate), 320)
    assert [type(e) for e in events] == [Dropped]


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_unaligned_chunks_give_the_same_events_as_one_feed(rate: int) -> None:
    pcm = (
        silence(0.5, rate)
        + tone_pcm(1.0, rate)
        + silence(1.0, rate)
        + tone_pcm(0.8, rate)
        + silence(1.0, rate)
    )
    whole = feed_all(Segmenter(rate, SegmenterConfig(), vad=loud), pcm, len(pcm))
    rng = random.Random(rate)
    seg = Segmenter(rate, SegmenterConfig(), vad=loud)
    events: list[Event] = []
    i = 0
    while i < len(pcm):
        n = 2 * rng.randint(1, 700)  # whole samples, never a multiple of the VAD frame on purpose
        events += seg.feed(pcm[i : i + n])
        i += n
    events += seg.flush()
    assert events == whole
    assert [type(e) for e in events] == [Segment, Segment]


def test_blips_shorter_than_min_speech_are_dropped() -> None:
    rate = 16000
    config = SegmenterConfig(min_speech_ms=250, start_ms=60)
    pcm = silence(0.5, rate) + tone_pcm(0.12, rate) + silence(1.0, rate)
    events = feed_all(Segmenter(rate, config, vad=loud), pcm, 640)
    assert len(events) == 1 and isinstance(events[0], Dropped)
    assert events[0].reason == "too_short" and events[0].voiced < 0.25


def test_long_speech_is_cut_at_the_pause_before_the_limit() -> None:
    rate = 16000
    config = SegmenterConfig(max_segment_ms=10_000, cut_search_ms=3_000, silence_ms=600)
    # 8.0 s of speech, a 0.3 s pause (too short to end the segment), 6 s more speech.
    pcm = tone_pcm(8.0, rate) + silence(0.3, rate) + tone_pcm(6.0, rate) + silence(1.0, rate)
    events = feed_all(Segmenter(rate, config, vad=loud), pcm, 960)
    segments = [e for e in events if isinstance(e, Segment)]
    assert [s.reason for s in segments] == ["max_length", "silence"]
    first, second = segments
    assert first.end - first.start <= 10.0
    assert 8.0 <= first.end <= 8.3  # inside the pause, not at the 10 s limit
    assert second.start == first.end  # nothing lost, nothing repeated
    assert second.speech_end == pytest.approx(14.3, abs=0.031)


def test_cut_without_a_pause_lands_on_the_quietest_frame_and_stays_under_the_limit() -> None:
    rate = 16000
    config = SegmenterConfig(max_segment_ms=5_000, cut_search_ms=2_000)
    quieter = tone_pcm(0.09, rate, amplitude=int(LOUD * 0.6))  # still voiced, but the quietest spot
    pcm = tone_pcm(3.6, rate) + quieter + tone_pcm(4.0, rate) + silence(1.0, rate)
    events = feed_all(Segmenter(rate, config, vad=loud), pcm, 480)
    segments = [e for e in events if isinstance(e, Segment)]
    assert segments[0].reason == "max_length"
    assert segments[0].end == pytest.approx(3.6, abs=0.09)
    assert all(s.end - s.start <= 5.0 for s in segments)


def test_silence_alone_gives_no_event() -> None:
    seg = Segmenter(16000, SegmenterConfig())
    assert feed_all(seg, silence(5.0, 16000), 320) == []


@pytest.mark.parametrize("amplitude", [300, 3000])
def test_white_noise_gives_no_segment(amplitude: int) -> None:
    """Hiss never reaches the model: loud noise looks like speech to WebRTC VAD and is dropped as
    noise; quiet hiss, lifted to a normal level, is dropped as noise or because Silero hears none."""
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16000 * 5) * amplitude).astype("<i2").tobytes()
    events = feed_all(Segmenter(16000, SegmenterConfig()), noise, 320)
    assert not [e for e in events if isinstance(e, Segment)]
    assert all(e.reason in ("too_short", "noise", "no_speech") for e in events if isinstance(e, Dropped))


@pytest.mark.parametrize("rate", SAMPLE_RATES)
def test_real_speech_at_every_rate_with_webrtc_vad(rate: int, speech: Speech) -> None:
    """espeak-ng utterances separated by silence, with the real WebRTC VAD: one segment each."""
    stream = speech.stream(rate)
    events = feed_all(Segmenter(rate, SegmenterConfig()), stream.pcm, rate // 100 * 2)
    segments = [e for e in events if isinstance(e, Segment)]
    assert len(segments) == len(stream.utterances)
    for seg, (start, end) in zip(segments, stream.utterances, strict=True):
        assert start - 0.45 <= seg.start <= start  # pre-roll included, first syllable not clipped
        assert end - 0.2 <= seg.speech_end <= end + 0.25  # WebRTC VAD holds on a little
        assert seg.end - seg.start < 30


def test_a_length_cut_inside_a_pause_leaves_nothing_voiced_and_ends_cleanly() -> None:
    """Speech up to just before the length limit, then a pause: the cut lands in the pause, and
    what is left of the segment has no voiced frame. Its end is a drop, not a crash."""
    calls = iter(range(10**6))
    seg = Segmenter(16000, SegmenterConfig(), vad=lambda _: next(calls) < 923)
    events = seg.feed(tone_pcm(1123 * 0.03, 16000)) + seg.flush()  # the VAD above decides
    segments = [e for e in events if isinstance(e, Segment)]
    assert len(segments) == 1 and segments[0].end <= 28.0
    assert all(isinstance(e, Segment | Dropped) for e in events)
    assert not seg.in_speech
