"""Telephony calls as the platforms really run them (each test fails on the code before the fix
named in it): Twilio's key and settings in ``<Parameter>``s (its stream URL takes no query
string), Plivo's ``extraHeaders``, several media streams on one call, an Exotel stream whose
start names no tracks, and readers of a call whose ingest died. Real whisper-base, real
WebSockets; the platforms themselves cannot run here, so their messages are the documented ones
(tests/fixtures/telephony)."""

from __future__ import annotations

import copy
import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from services.stack import POOL, Stack, start_ingest, wait_until
from tests.platforms import call_frames, encode
from tests.test_calls import read_events, send_call, texts_by_track, twilio_signature, with_call_id
from tools.speech import Speech, Stream, wer


def twilio_start(call: str, stream: str, custom: dict[str, str], tracks: list[str]) -> dict[str, Any]:
    start = with_call_id("twilio", call)
    start["start"]["streamSid"] = start["streamSid"] = stream
    start["start"]["customParameters"] = custom
    start["start"]["tracks"] = tracks
    return start


def test_twilio_carries_its_key_and_settings_in_custom_parameters(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    """Defect 10: the key (`token`) and `words` as <Parameter>s; the signature over the URL Twilio
    calls, which has no query string. A wrong key in them is refused; the key is never recorded."""
    flags = ("--api-keys", "s3cret", "--twilio-auth-token", "tw-token")
    uri, ingest = start_ingest(base_stack.redis_url, POOL, *flags, logs=tmp_path)
    try:
        url = f"{uri}/twilio"
        headers = {"X-Twilio-Signature": twilio_signature("tw-token", url)}
        stream = speech.stream(8000, (1,))
        audio = {"inbound": encode(stream.path, "mulaw", 8000)}
        call, wrong = f"CA{uuid.uuid4().hex}", f"CA{uuid.uuid4().hex}"
        custom = {"token": "s3cret", "words": "true", "FirstName": "Jane"}
        frames = call_frames("twilio", audio, 160, start=twilio_start(call, "MZ1", custom, ["inbound"]))
        assert send_call(url, frames, headers) == (1000, "")
        bad = call_frames(
            "twilio", audio, 160, start=twilio_start(wrong, "MZ2", {"token": "nope"}, ["inbound"])
        )
        code, reason = send_call(url, bad, headers)
        assert code == 1008 and "API key" in reason
        events, _ = read_events(f"{uri}/calls/{call}/events?token=s3cret")
    finally:
        ingest.stop()
    assert events[0]["custom"] == {"words": "true", "FirstName": "Jane"}  # the key is not kept
    finals = [e for e in events if e["type"] == "final"]
    assert finals and all(f["words"] for f in finals)
    assert wer(stream.texts[0], texts_by_track(events)["inbound"]) < 0.3


def test_plivo_extra_headers_carry_the_key(base_stack: Stack, speech: Speech, tmp_path: Path) -> None:
    """Defect 10 (Plivo): `<Stream extraHeaders="token=...">` arrives in start's extra_headers."""
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--api-keys", "s3cret", logs=tmp_path)
    try:
        stream = speech.stream(8000, (3,))
        call = str(uuid.uuid4())
        start = with_call_id("plivo", call)
        start["extra_headers"] = "token=s3cret,agent=42"
        frames = call_frames("plivo", {"inbound": encode(stream.path, "mulaw", 8000)}, 160, start=start)
        with connect(f"{uri}/plivo", open_timeout=10) as ws:
            for frame in frames:
                ws.send(frame)
        events, close_code = read_events(f"{uri}/calls/{call}/events?token=s3cret")
    finally:
        ingest.stop()
    assert close_code == 1000 and events[0]["custom"] == {"agent": "42"}
    assert wer(stream.texts[0], texts_by_track(events)["inbound"]) < 0.3


def test_two_streams_on_one_call_each_end_with_their_own_done(base_stack: Stack, speech: Speech) -> None:
    """Defect 12: two <Stream>s of one call share its event stream; every event names its stream,
    a reader ends only once both are done, and each stream's segments are its own."""
    call = f"CA{uuid.uuid4().hex}"
    first, second = speech.stream(8000, (1,)), speech.stream(8000, (3, 5))
    reader: dict[str, Any] = {}

    def follow() -> None:
        reader["events"], reader["code"] = read_events(f"{base_stack.uri}/calls/{call}/events")

    def stream_of(said: Stream, sid: str) -> list[str]:
        audio = {"inbound": encode(said.path, "mulaw", 8000)}
        return call_frames("twilio", audio, 160, start=twilio_start(call, sid, {}, ["inbound"]))

    thread = threading.Thread(target=follow)
    thread.start()
    uri = f"{base_stack.uri}/twilio"
    senders = [
        threading.Thread(target=send_call, args=(uri, stream_of(s, sid)))
        for s, sid in ((first, "MZfirst"), (second, "MZsecond"))
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(180)
    thread.join(180)
    events = reader["events"]
    assert reader["code"] == 1000
    assert sorted(e["stream"] for e in events if e["type"] == "done") == ["MZfirst", "MZsecond"]
    assert events[-1]["type"] == "done"
    for sid, said in (("MZfirst", first), ("MZsecond", second)):
        own = [e for e in events if e["stream"] == sid]
        segments = [e["segment"] for e in own if e["type"] == "final"]
        assert segments == sorted(set(segments))
        text = " ".join(e["text"] for e in own if e["type"] == "final")
        assert wer(" ".join(said.texts), text) < 0.3, (sid, text)


def test_an_exotel_start_without_tracks_takes_media_of_both(base_stack: Stack, speech: Speech) -> None:
    """Defect 13: Exotel tags each media message with its track; a start that lists none used to
    close the stream at its first outbound frame."""
    caller, bot = speech.stream(8000, (1,)), speech.stream(8000, (3,))
    call = uuid.uuid4().hex
    start = with_call_id("exotel", call)
    start["start"].pop("tracks", None)
    tracks = {
        "inbound": encode(caller.path, "linear16", 8000),
        "outbound": encode(bot.path, "linear16", 8000),
    }
    frames = call_frames("exotel", tracks, 3200, bytes_per_second=16000, start=start)
    assert send_call(f"{base_stack.uri}/exotel", frames) == (1000, "")
    events, _ = read_events(f"{base_stack.uri}/calls/{call}/events")
    by_track = texts_by_track(events)
    assert wer(caller.texts[0], by_track["inbound"]) < 0.3
    assert wer(bot.texts[0], by_track["outbound"]) < 0.3


def test_a_reader_of_a_call_whose_ingest_died_is_told_and_let_go(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    """Defect 11: the ingest of a call is killed before its done; readers (from the start, and
    one resuming with ?from=) are ended with call_lost instead of waiting forever."""
    uri, ingest = start_ingest(base_stack.redis_url, POOL, logs=tmp_path)
    call = f"CA{uuid.uuid4().hex}"
    stream = speech.stream(8000, (1, 3))
    frames = call_frames("twilio", {"inbound": encode(stream.path, "mulaw", 8000)}, 160,
                         start=twilio_start(call, "MZ1", {}, ["inbound"]), stop=False)  # fmt: skip
    with connect(f"{uri}/twilio", open_timeout=10) as ws:  # the ingest dies under it
        for frame in frames[: len(frames) // 2]:
            ws.send(frame)
        wait_until(lambda: read_first(f"{base_stack.uri}/calls/{call}/events"), 30, "the call's start event")
        ingest.popen.send_signal(signal.SIGKILL)
        ingest.stop()
    started = time.monotonic()
    events, code = read_events(f"{base_stack.uri}/calls/{call}/events", timeout=60)
    assert code == 1011 and events[-1]["type"] == "error" and events[-1]["code"] == "call_lost"
    resumed, code = read_events(f"{base_stack.uri}/calls/{call}/events?from={events[0]['id']}", timeout=60)
    assert code == 1011 and resumed[-1]["code"] == "call_lost"
    assert time.monotonic() - started < 60


def read_first(uri: str) -> dict[str, Any] | None:
    """The first event a reader gets, or None if none comes within a second."""
    with connect(uri, open_timeout=10) as ws:
        try:
            event: dict[str, Any] = json.loads(ws.recv(timeout=1))
            return copy.deepcopy(event)
        except TimeoutError:
            return None
