"""Wire formats: query parsing, client messages, stream entries, results."""

from __future__ import annotations

import pytest

from services.ingest.core.inputs import EndOfAudio, Finalize, KeepAlive
from services.ingest.protocols.native import parse_text
from services.protocol import (
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    Ready,
    SegmentJob,
    SegmentResult,
    SessionParams,
    parse_query,
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", SessionParams(16000, None)),
        ("sample_rate=48000", SessionParams(48000, None)),
        ("sampling_rate=8000", SessionParams(8000, None)),  # Oriserve's client
        ("samplingRate=32000&model=prime", SessionParams(32000, "prime")),  # Oriserve's server
        ("model=&sample_rate=16000", SessionParams(16000, None)),
        ("token=k&partials=1", SessionParams(16000, None, partials=True)),
        ("sample_rate=8000&encoding=mulaw", SessionParams(8000, None, encoding="mulaw")),
        ("encoding=ALAW&channels=2", SessionParams(16000, None, encoding="alaw", channels=2)),
        (
            "channels=2&roles=agent,customer",
            SessionParams(16000, None, channels=2, roles=("agent", "customer")),
        ),
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


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("encoding=mulaw&interim=1", "unknown query parameter 'interim'"),  # not silently ignored
        ("sample_rate=16000&foo=bar", "unknown query parameter 'foo'"),
        ("encoding=opus", "encoding 'opus' is not supported"),
        ("channels=3", "channels='3'"),
        ("channels=two", "channels='two'"),
        ("roles=agent,customer", "one distinct name per channel (1)"),
        ("channels=2&roles=a,a", "one distinct name per channel (2)"),
        ("channels=2&roles=a,b%20c", "one distinct name per channel (2)"),
    ],
)
def test_a_parameter_the_server_cannot_honour_is_refused(query: str, says: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_query(query)
    assert err.value.code == "bad_parameter" and says in err.value.message


def test_client_text_messages() -> None:
    assert parse_text("EOF") == EndOfAudio()
    assert parse_text('{"type": "eof"}') == EndOfAudio()
    assert parse_text('{"type": "close_stream"}') == EndOfAudio()
    assert parse_text('{"type": "keepalive"}') == KeepAlive()
    assert parse_text('{"type": "finalize"}') == Finalize()
    for bad in ["hello", "[1]", '{"type": "pause"}', "{"]:
        with pytest.raises(ProtocolError) as err:
            parse_text(bad)
        assert err.value.code == "bad_message"


def test_segment_job_round_trip() -> None:
    job = SegmentJob("abc", 3, b"\x01\x00" * 16000, 1.5, 2.5, 1700000000.25, 1700000000.5, channel=1)
    fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in job.to_fields().items()}
    assert SegmentJob.from_fields(fields) == job
    assert job.duration == 1.0
    with pytest.raises(ValueError):
        SegmentJob.from_fields({b"session": b"abc"})


def test_result_round_trip_and_malformed() -> None:
    result = SegmentResult("abc", 2, "text", text="namaste", timings={"model_start": 1.0}, channel=1)
    assert SegmentResult.from_json(result.to_json()) == result
    for bad in ["{}", "[]", '{"session": "a", "segment": 1, "outcome": "maybe"}', "nope"]:
        with pytest.raises(ValueError):
            SegmentResult.from_json(bad)


def test_events_carry_oriserve_text_key() -> None:
    final = Final("kal milte hain", 0, 0.5, 1.75, 0.8123)
    assert final.to_json() == (
        '{"type":"final","text":"kal milte hain","segment":0,"channel":0,'
        '"start":0.5,"end":1.75,"latency":0.812}'
    )
    assert ErrorEvent("timeout", "late", 4).to_json() == (
        '{"type":"error","code":"timeout","message":"late","segment":4,"channel":0}'
    )
    assert (
        ErrorEvent("idle_timeout", "quiet").to_json()
        == '{"type":"error","code":"idle_timeout","message":"quiet"}'
    )


def test_events_carry_their_channel_and_its_role() -> None:
    assert Partial("haan", 2, 1, "customer").to_json() == (
        '{"type":"partial","text":"haan","segment":2,"channel":1,"role":"customer"}'
    )
    ready = Ready("s", "swift", 8000, False, "mulaw", 2, ("agent", "customer")).to_json()
    assert '"encoding":"mulaw","channels":2,"roles":["agent","customer"]' in ready


def test_a_text_frame_nested_too_deep_is_a_bad_message_not_a_crash() -> None:
    """json.loads raises RecursionError (not ValueError) for a frame nested 100,000 deep."""
    with pytest.raises(ProtocolError) as refused:
        parse_text("[" * 100_000)
    assert refused.value.code == "bad_message"
