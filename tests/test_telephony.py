"""Telephony media streams in-process: each platform's documented messages parsed
(tests/fixtures/telephony), the ones to refuse, and a call's decisions. No socket, no Redis."""

from __future__ import annotations

import base64
import json

import pytest

from services import metrics
from services.ingest.config import parse_args
from services.ingest.protocols import native
from services.ingest.protocols.telephony.call import Call, record
from services.ingest.protocols.telephony.frames import (
    Connected,
    Dtmf,
    Mark,
    Media,
    Platform,
    Start,
    Stop,
    parse,
)
from services.metrics import IngestMetrics
from services.protocol import CallEvent, Final, ProtocolError, SessionParams
from tests.platforms import fixture
from tests.test_segmenter import loud, silence, tone_pcm


def frames(platform: str) -> dict[str, str]:
    return {name: json.dumps(message) for name, message in fixture(platform).items() if name != "source"}


def test_twilio_messages_as_documented() -> None:
    twilio = frames("twilio")
    assert parse("twilio", twilio["connected"]) == Connected()
    assert parse("twilio", twilio["start"]) == Start(
        "twilio",
        "CA00000000000000000000000000000000",
        "MZ18ad3ab5a668481ce02b83e7395059f0",
        ("inbound", "outbound"),
        "mulaw",
        8000,
        {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"},
    )
    media = parse("twilio", twilio["media"])
    assert isinstance(media, Media) and media.track == "outbound"
    assert media.audio == base64.b64decode(fixture("twilio")["media"]["media"]["payload"])
    assert parse("twilio", twilio["dtmf"]) == Dtmf("1", "inbound")  # "inbound_track" is the inbound track
    assert parse("twilio", twilio["mark"]) == Mark("my label")
    assert parse("twilio", twilio["stop"]) == Stop("")


def test_exotel_messages_as_documented() -> None:
    exotel = frames("exotel")
    start = parse("exotel", exotel["start"])
    assert start == Start(
        "exotel",
        "a1b2c3d4e5f60718293a4b5c6d7e18b2",
        "b5f3c9a2e1d04f6b8a7c",
        ("inbound", "outbound"),  # its start names no tracks: media of either may follow
        "linear16",  # Exotel streams 16-bit PCM; its "base64" names the transport
        8000,
        {"queue": "billing"},
    )
    assert parse("exotel", exotel["media"]) == Media("", b"\0\0\0\0")
    assert parse("exotel", exotel["dtmf"]) == Dtmf("5", "")
    assert parse("exotel", exotel["mark"]) == Mark("greeting-played")
    assert parse("exotel", exotel["stop"]) == Stop("callended")


def test_plivo_messages_as_documented() -> None:
    plivo = frames("plivo")
    start = parse("plivo", plivo["start"])
    assert isinstance(start, Start)
    assert (start.call, start.tracks, start.encoding, start.sample_rate) == (
        "3d6e5c31-8b1a-4c55-9d3f-0d7e1f2a6b90",
        ("inbound",),
        "mulaw",
        8000,
    )
    assert parse("plivo", plivo["media"]) == Media("inbound", b"\xfe" * 6)
    assert parse("plivo", plivo["dtmf"]) == Dtmf("9", "inbound")


def start_with(platform: str, **changes: object) -> str:
    message = fixture(platform)["start"]
    key = "mediaFormat" if platform != "exotel" else "media_format"
    for name, value in changes.items():
        if name in ("encoding", "sampleRate", "sample_rate"):
            message["start"][key][name] = value
        else:
            message["start"][name] = value
    return json.dumps(message)


@pytest.mark.parametrize(
    ("platform", "frame", "code", "says"),
    [
        ("twilio", "not json", "bad_message", "not JSON"),
        ("twilio", '{"event": "hangup"}', "bad_message", "unknown twilio event 'hangup'"),
        ("plivo", '{"event": "stop"}', "bad_message", "unknown plivo event 'stop'"),
        ("twilio", '{"event": "media", "media": {"payload": "@@not base64@@"}}', "bad_audio", "not base64"),
        ("twilio", '{"event": "media", "media": {}}', "bad_message", "without a payload"),
        ("twilio", '{"event": "start", "start": 5}', "bad_message", "start must be a JSON object"),
        (
            "twilio",
            start_with("twilio", encoding="audio/opus"),
            "bad_message",
            "'audio/opus' is not supported",
        ),
        ("plivo", start_with("plivo", sampleRate=16000), "bad_message", "mulaw at 16000 Hz"),
        ("exotel", start_with("exotel", sample_rate="44100"), "bad_message", "linear16 at 44100 Hz"),
        ("twilio", start_with("twilio", tracks=["a", "b", "c"]), "bad_message", "3 tracks"),
        ("twilio", start_with("twilio", callSid="../../etc"), "bad_message", "call id"),
    ],
)
def test_what_a_platform_must_not_send_is_refused(platform: str, frame: str, code: str, says: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(platform, frame)  # type: ignore[arg-type]
    assert refused.value.code == code and says in refused.value.message


def make_call(start: Start) -> Call:
    config = parse_args(["--silence-ms", "300", "--min-speech-ms", "200", "--eager-ms", "0"])
    return Call(
        start, "s1", "swift", SessionParams(), config, IngestMetrics(metrics.new_registry()), 0.0, vad=loud
    )


def test_a_two_track_call_segments_each_track_and_puts_dtmf_marks_and_stop_on_its_timeline() -> None:
    start = Start("twilio", "CA1", "MZ1", ("inbound", "outbound"), "linear16", 8000)
    call = make_call(start)
    inbound = silence(0.3, 8000) + tone_pcm(0.8, 8000) + silence(1.5, 8000)
    outbound = silence(1.4, 8000) + tone_pcm(0.8, 8000) + silence(0.4, 8000)
    step = 320  # 20 ms of 16-bit PCM at 8 kHz
    for i in range(0, len(inbound), step):
        call.message(Media("inbound", inbound[i : i + step]), 0.0)
        call.message(Media("outbound", outbound[i : i + step]), 0.0)
        if i == 50 * step:
            call.message(Dtmf("7", "inbound"), 0.0)
            call.message(Mark("hold-music"), 0.0)
    call.message(Stop("callended"), 0.0)
    jobs = call.channels.jobs_to_queue()
    assert sorted((j.channel, j.segment) for j in jobs) == [(0, 0), (1, 0)]
    events = [e for e in call.channels.events_to_send() if native.shown(e)]  # what the call records
    assert [e.type for e in events] == ["start", "dtmf", "mark", "stop"]
    assert all(isinstance(e, CallEvent) for e in events)
    started, dtmf, mark, stop = (e.fields for e in events if isinstance(e, CallEvent))
    assert started["tracks"] == ["inbound", "outbound"] and started["call"] == "CA1"
    assert (dtmf["digit"], dtmf["track"], dtmf["at"]) == ("7", "inbound", pytest.approx(1.02, abs=0.04))
    assert mark["name"] == "hold-music" and stop["reason"] == "callended"
    assert call.channels.eof
    with pytest.raises(ProtocolError, match="media after stop"):
        call.message(Media("inbound", b"\0\0"), 0.0)


def test_media_on_a_track_start_did_not_announce_and_a_second_start_are_refused() -> None:
    call = make_call(Start("twilio", "CA1", "MZ1", ("inbound",), "mulaw", 8000))
    call.message(Media("", b"\xff" * 160), 0.0)  # one track: media that names none is its
    with pytest.raises(ProtocolError, match="track 'outbound'"):
        call.message(Media("outbound", b"\xff" * 160), 0.0)
    with pytest.raises(ProtocolError, match="second start"):
        call.message(Start("twilio", "CA1", "MZ1", ("inbound",), "mulaw", 8000), 0.0)


def test_24_khz_pcm_is_resampled_for_the_vad_and_segmented_where_its_speech_is() -> None:
    call = make_call(Start("exotel", "c1", "s1", ("inbound",), "linear16", 24000))
    pcm = silence(0.5, 24000) + tone_pcm(1.0, 24000) + silence(0.6, 24000)
    for i in range(0, len(pcm), 4800):  # Exotel's 100 ms chunks
        call.message(Media("", pcm[i : i + 4800]), 0.0)
    (job,) = call.channels.jobs_to_queue()
    assert job.start == pytest.approx(0.2, abs=0.05) and job.end == pytest.approx(1.7, abs=0.05)
    assert len(job.pcm) == round((job.end - job.start) * 16000) * 2


def test_a_call_event_names_its_channel_role_track() -> None:
    event = Final("hello", 0, 1.0, 2.0, 0.5, channel=1, role="outbound")
    assert json.loads(record(event, "MZ1")) == {
        "type": "final",
        "text": "hello",
        "segment": 0,
        "channel": 1,
        "track": "outbound",
        "start": 1.0,
        "end": 2.0,
        "latency": 0.5,
        "stream": "MZ1",
    }


def test_the_length_limit_on_one_track_ends_the_whole_call() -> None:
    config = parse_args(
        ["--silence-ms", "300", "--min-speech-ms", "200", "--eager-ms", "0", "--max-session-s", "1"]
    )
    start = Start("twilio", "CA1", "MZ1", ("inbound", "outbound"), "linear16", 8000)
    call = Call(
        start, "s1", "swift", SessionParams(), config, IngestMetrics(metrics.new_registry()), 0.0, vad=loud
    )
    while not call.channels.eof:  # the inbound track alone: the outbound one has sent nothing
        call.message(Media("inbound", silence(0.02, 8000)), 0.0)
    assert all(core.eof for core in call.channels.cores)  # both channels ended, so the call can finish
    assert call.channels.finished and call.channels.ending is not None


@pytest.mark.parametrize("platform", ["twilio", "exotel", "plivo"])
def test_json_nested_too_deep_is_a_bad_message_not_a_crash(platform: Platform) -> None:
    """Found hunting defect 1's class (an outside read that catches less than the library raises):
    json.loads raises RecursionError, not ValueError, for a frame nested 100,000 deep."""
    with pytest.raises(ProtocolError) as refused:
        parse(platform, "[" * 100_000)
    assert refused.value.code == "bad_message"
