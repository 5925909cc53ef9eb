"""Wire formats: query parsing, client messages, stream entries, results."""

from __future__ import annotations

import pytest

from services.protocol import (
    CLOSE_UNSUPPORTED_DATA,
    Eof,
    ErrorEvent,
    Final,
    ProtocolError,
    SegmentJob,
    SegmentResult,
    SessionParams,
    check_audio_frame,
    parse_query,
    parse_text,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", SessionParams(16000, None)),
        ("sample_rate=48000", SessionParams(48000, None)),
        ("sampling_rate=8000", SessionParams(8000, None)),  # Oriserve's client
        ("samplingRate=32000&model=prime", SessionParams(32000, "prime")),  # Oriserve's server
        ("model=&sample_rate=16000", SessionParams(16000, None)),
    ],
)
def test_query(query: str, expected: SessionParams) -> None:
    assert parse_query(query) == expected


@pytest.mark.parametrize(
    "query", ["sample_rate=44100", "sample_rate=abc", "sample_rate=8000&sampling_rate=16000"]
)
def test_bad_sample_rate(query: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_query(query)
    assert err.value.code == "bad_sample_rate"


def test_client_text_messages() -> None:
    assert parse_text("EOF") == Eof()
    assert parse_text('{"type": "eof"}') == Eof()
    for bad in ["hello", "[1]", '{"type": "pause"}', "{"]:
        with pytest.raises(ProtocolError) as err:
            parse_text(bad)
        assert err.value.code == "bad_message"


def test_odd_length_frame_is_refused() -> None:
    check_audio_frame(b"\x00\x01")
    with pytest.raises(ProtocolError) as err:
        check_audio_frame(b"\x00")
    assert err.value.close_code == CLOSE_UNSUPPORTED_DATA


def test_segment_job_round_trip() -> None:
    job = SegmentJob("abc", 3, b"\x01\x00" * 16000, 1.5, 2.5, 1700000000.25, 1700000000.5)
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in job.to_fields().items()}
    assert SegmentJob.from_fields(fields) == job
    assert job.duration == 1.0
    with pytest.raises(ValueError):
        SegmentJob.from_fields({b"session": b"abc"})


def test_result_round_trip_and_malformed() -> None:
    result = SegmentResult("abc", 2, "text", text="namaste", timings={"model_start": 1.0})
    assert SegmentResult.from_json(result.to_json()) == result
    for bad in ["{}", "[]", '{"session": "a", "segment": 1, "outcome": "maybe"}', "nope"]:
        with pytest.raises(ValueError):
            SegmentResult.from_json(bad)


def test_events_carry_oriserve_text_key() -> None:
    final = Final("kal milte hain", 0, 0.5, 1.75, 0.8123)
    assert final.to_json() == (
        '{"type":"final","text":"kal milte hain","segment":0,"start":0.5,"end":1.75,"latency":0.812}'
    )
    assert ErrorEvent("timeout", "late", 4).to_json() == (
        '{"type":"error","code":"timeout","message":"late","segment":4}'
    )
