"""A session's audio as it arrives, in-process: encodings (G.711 against sox), interleaved
channels each with its own segments, roles, finalize, and the frames it refuses. No socket, no
Redis, no model (services/ingest/core/channels.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from services import metrics
from services.audio import decode_pcm16
from services.ingest.config import parse_args
from services.ingest.core.channels import Channels
from services.metrics import IngestMetrics
from services.protocol import Final, Partial, ProtocolError, SegmentJob, SegmentResult, SessionParams
from tests.test_core import shown
from tests.test_segmenter import loud, silence, tone_pcm
from tools.speech import Speech

FLAGS = ("--silence-ms", "300", "--min-speech-ms", "200", "--eager-ms", "0")


def session(params: SessionParams, *flags: str, deterministic: bool = True) -> tuple[Channels, IngestMetrics]:
    registry = IngestMetrics(metrics.new_registry())
    config = parse_args([*FLAGS, *flags])
    return Channels(
        "s1", "swift", params, config, registry, 0.0, vad=loud if deterministic else None
    ), registry


def stream(channels: Channels, data: bytes, frame_bytes: int, now: float = 0.0) -> list[SegmentJob]:
    jobs: list[SegmentJob] = []
    for i in range(0, len(data), frame_bytes):
        channels.audio(data[i : i + frame_bytes], now)
        jobs += channels.jobs_to_queue()
    return jobs


def interleave(*pcms: bytes) -> bytes:
    columns = [np.frombuffer(pcm, "<i2") for pcm in pcms]
    return np.stack(columns, axis=1).astype("<i2").tobytes()


@pytest.mark.parametrize(("encoding", "sox_name"), [("mulaw", "u-law"), ("alaw", "a-law")])
def test_g711_decodes_every_code_as_sox_does(encoding: str, sox_name: str) -> None:
    codes = bytes(range(256))
    args = ["sox", "-t", "raw", "-r", "8000", "-e", sox_name, "-b", "8", "-c", "1", "-"]
    decoded = subprocess.run(
        [*args, "-t", "raw", "-e", "signed", "-b", "16", "-"], input=codes, capture_output=True
    )
    assert decoded.returncode == 0, decoded.stderr
    assert decode_pcm16(codes, encoding) == decoded.stdout


@pytest.mark.parametrize(("encoding", "sox_name"), [("mulaw", "u-law"), ("alaw", "a-law")])
def test_sox_encoded_speech_is_segmented_as_its_pcm_is(
    speech: Speech, tmp_path: Path, encoding: str, sox_name: str
) -> None:
    """8 kHz G.711 from sox (a real encoder) gives the same segments as the same audio sent as PCM."""
    source = speech.stream(8000, (1, 3)).path
    g711 = tmp_path / f"speech.{encoding}"
    subprocess.run(["sox", str(source), "-t", "raw", "-e", sox_name, "-b", "8", str(g711)], check=True)
    pcm = tmp_path / "decoded.raw"
    raw = ["sox", "-t", "raw", "-r", "8000", "-e", sox_name, "-b", "8", "-c", "1", str(g711)]
    subprocess.run([*raw, "-t", "raw", "-e", "signed", "-b", "16", str(pcm)], check=True)
    as_g711, _ = session(SessionParams(8000, None, encoding=encoding), deterministic=False)
    as_pcm, _ = session(SessionParams(8000, None), deterministic=False)
    got = stream(as_g711, g711.read_bytes(), 160)  # 20 ms frames of a byte a sample
    want = stream(as_pcm, pcm.read_bytes(), 320)
    assert len(want) == 2  # the two sentences
    assert [(j.start, j.end, j.pcm) for j in got] == [(j.start, j.end, j.pcm) for j in want]


def test_two_channels_are_segmented_apart_and_answered_under_their_roles() -> None:
    rate = 16000
    agent = silence(0.5, rate) + tone_pcm(1.0, rate) + silence(2.5, rate)
    customer = silence(2.0, rate) + tone_pcm(1.2, rate) + silence(0.8, rate)
    channels, registry = session(SessionParams(rate, None, channels=2, roles=("agent", "customer")))
    jobs = stream(channels, interleave(agent, customer), 640 * 2)
    assert [(j.channel, j.segment) for j in jobs] == [(0, 0), (1, 0)]  # each channel numbers its own
    by_channel = {j.channel: j for j in jobs}
    # Each where its own speech is (with the 0.3 s pre-roll and 0.2 s post-roll around it).
    assert 0.1 < by_channel[0].start < 0.5 < 1.5 < by_channel[0].end < 1.8
    assert 1.6 < by_channel[1].start < 2.0 < 3.2 < by_channel[1].end < 3.5
    assert len(by_channel[0].pcm) == pytest.approx(
        (by_channel[0].end - by_channel[0].start) * rate * 2, abs=64
    )
    channels.result(SegmentResult("s1", 0, "text", "namaste", channel=1), 5.0)
    channels.result(SegmentResult("s1", 0, "text", "hello", channel=0), 5.0)
    events = shown(channels)
    assert {(e.text, e.channel, e.role) for e in events if isinstance(e, Final)} == {
        ("hello", 0, "agent"),
        ("namaste", 1, "customer"),
    }
    channels.result(SegmentResult("s1", 0, "text", "stray", channel=7), 5.0)  # no such channel
    assert shown(channels) == []
    channels.end_of_audio(6.0)
    assert channels.finished
    assert registry.bytes_received._value.get() == len(agent) * 2


def test_partials_carry_their_channel() -> None:
    rate = 16000
    channels, _ = session(SessionParams(rate, None, partials=True, channels=2), "--partial-ms", "300")
    jobs = stream(channels, interleave(silence(0.3, rate) + tone_pcm(1.0, rate), silence(1.3, rate)), 640)
    assert {j.channel for j in jobs if j.partial} == {0}
    channels.result(SegmentResult("s1", 0, "text", "hel", partial=True, channel=0), 1.0)
    assert shown(channels) == [Partial("hel", 0, 0, None)]


def test_finalize_closes_the_open_segment_and_the_session_goes_on() -> None:
    rate = 16000
    channels, _ = session(SessionParams(rate, None))
    assert stream(channels, silence(0.5, rate) + tone_pcm(1.0, rate), 640) == []
    channels.finalize(1.5)
    (first,) = channels.jobs_to_queue()
    assert first.segment == 0 and first.end == pytest.approx(1.5, abs=0.03)
    channels.finalize(1.5)  # nothing open: nothing happens
    assert channels.jobs_to_queue() == []
    (second,) = stream(channels, tone_pcm(1.0, rate) + silence(0.6, rate), 640)
    assert second.segment == 1 and not channels.eof


@pytest.mark.parametrize(
    ("params", "frame", "code"),
    [
        (SessionParams(16000, None), b"\0" * 3, "bad_audio"),  # half a sample
        (SessionParams(16000, None, channels=2), b"\0" * 6, "bad_audio"),  # a sample of one channel
        (SessionParams(8000, None, encoding="mulaw", channels=2), b"\0" * 3, "bad_audio"),
        (SessionParams(16000, None), b"\0" * (300 * 1024), "frame_too_big"),
    ],
)
def test_a_frame_it_cannot_take_is_refused(params: SessionParams, frame: bytes, code: str) -> None:
    channels, _ = session(params)
    with pytest.raises(ProtocolError) as refused:
        channels.audio(frame, 0.0)
    assert refused.value.code == code
    channels.audio(b"\0" * 4, 0.0)  # whole samples of every channel in every encoding: taken
