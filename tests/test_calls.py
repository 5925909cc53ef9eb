"""Telephony calls end to end with the real whisper-base: the platforms' own messages (shaped after
their documentation, tests/fixtures/telephony) over a real WebSocket, each track transcribed under
its name, read back live from /calls/<call id>/events."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from services.stack import POOL, Stack, counter, free_port, start_ingest, wait_until
from tests.platforms import call_frames, encode, fixture
from tools.speech import Speech, wer


def two_speakers(speech: Speech, tmp_path: Path) -> tuple[Path, Path, str, str]:
    """Two 8 kHz WAVs of one call: the agent speaks first, then the customer answers."""
    agent, customer = speech.stream(8000, (1,)), speech.stream(8000, (3,))
    a, c = np.frombuffer(agent.pcm, np.int16), np.frombuffer(customer.pcm, np.int16)
    outbound = np.concatenate([a, np.zeros(len(c), np.int16)])
    inbound = np.concatenate([np.zeros(len(a), np.int16), c])
    paths = tmp_path / "outbound.wav", tmp_path / "inbound.wav"
    for path, samples in zip(paths, (outbound, inbound), strict=True):
        sf.write(path, samples, 8000, subtype="PCM_16")
    return paths[0], paths[1], agent.texts[0], customer.texts[0]


def with_call_id(platform: str, call: str) -> dict[str, Any]:
    start = fixture(platform)["start"]
    start["start"][{"twilio": "callSid", "exotel": "call_sid", "plivo": "callId"}[platform]] = call
    return start  # type: ignore[no-any-return]


def send_call(uri: str, frames: list[str], headers: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Send a platform's frames as fast as they go, then wait for the server to close: (code, reason)."""
    with connect(uri, open_timeout=10, additional_headers=headers) as ws:
        try:
            for frame in frames:  # the server may refuse the call after its start
                ws.send(frame)
            while True:
                ws.recv(timeout=120)  # a platform gets nothing back; the server closes when done
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


def read_events(uri: str, timeout: float = 180) -> tuple[list[dict[str, Any]], int | None]:
    """Everything /calls/<id>/events sends, until the server closes."""
    events = []
    with connect(uri, open_timeout=10) as ws:
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=timeout)))
        except ConnectionClosed:
            pass
        return events, ws.close_code


class Reader(threading.Thread):
    """A live reader of a call's events (an agent desktop), connected before the call starts."""

    def __init__(self, uri: str) -> None:
        super().__init__(daemon=True)
        self.uri = uri
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.start()

    def run(self) -> None:
        self.events, self.close_code = read_events(self.uri)


def texts_by_track(events: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for event in events:
        if event["type"] == "final":
            out.setdefault(event["track"], []).append(event["text"])
    return {track: " ".join(texts) for track, texts in out.items()}


def test_a_two_track_twilio_call_is_transcribed_per_track_and_read_back_live(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    outbound, inbound, said_by_agent, said_by_customer = two_speakers(speech, tmp_path)
    call = f"CA{uuid.uuid4().hex}"
    reader = Reader(f"{base_stack.uri}/calls/{call}/events")  # before the call exists
    tracks = {"inbound": encode(inbound, "mulaw", 8000), "outbound": encode(outbound, "mulaw", 8000)}
    frames = call_frames("twilio", tracks, 160, start=with_call_id("twilio", call), dtmf_at=1.0, mark_at=2.0)
    assert send_call(f"{base_stack.uri}/twilio", frames) == (1000, "")
    reader.join(120)
    events = reader.events
    assert reader.close_code == 1000
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert events[0]["call"] == call and events[0]["tracks"] == ["inbound", "outbound"]
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    by_track = texts_by_track(events)
    wer_in, wer_out = wer(said_by_customer, by_track["inbound"]), wer(said_by_agent, by_track["outbound"])
    print(f"WER inbound (customer) {wer_in:.3f}, outbound (agent) {wer_out:.3f}")
    assert wer_in < 0.3 and wer_out < 0.3, by_track
    assert {e["channel"] for e in events if e.get("track") == "inbound"} == {0}  # finals and the DTMF
    dtmf = next(e for e in events if e["type"] == "dtmf")
    assert (dtmf["digit"], dtmf["track"]) == ("1", "inbound") and dtmf["at"] == pytest.approx(1.0, abs=0.1)
    mark = next(e for e in events if e["type"] == "mark")
    assert mark["name"] == "my label" and mark["at"] == pytest.approx(2.0, abs=0.1)
    assert [e["type"] for e in events].count("stop") == 1
    # A desktop that reconnects after the third event gets the rest, nothing twice.
    rest, close_code = read_events(f"{base_stack.uri}/calls/{call}/events?from={events[2]['id']}")
    assert close_code == 1000 and rest == events[3:]


def test_an_exotel_stream_of_pcm_with_basic_auth(base_stack: Stack, speech: Speech, tmp_path: Path) -> None:
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--api-keys", "s3cret", logs=tmp_path)
    try:
        stream = speech.stream(8000, (1, 3))
        call = uuid.uuid4().hex
        pcm = encode(stream.path, "linear16", 8000)
        start = with_call_id("exotel", call)
        frames = call_frames(
            "exotel", {"inbound": pcm}, 3200, bytes_per_second=16000, start=start, dtmf_at=2.0
        )
        wrong = {"Authorization": "Basic " + base64.b64encode(b"x:no").decode()}
        with pytest.raises(InvalidStatus) as refused:  # a wrong key in the request: refused at once
            send_call(f"{uri}/exotel", frames, wrong)
        assert refused.value.response.status_code == 401
        # None in the request, none in its custom parameters: refused once start says so.
        code, reason = send_call(f"{uri}/exotel", frames)
        assert code == 1008 and "API key" in reason
        basic = {"Authorization": "Basic " + base64.b64encode(b"exotel:s3cret").decode()}
        assert send_call(f"{uri}/exotel", frames, basic) == (1000, "")
        events, _ = read_events(f"{uri}/calls/{call}/events?token=s3cret")
    finally:
        ingest.stop()
    assert wer(" ".join(stream.texts), texts_by_track(events)["inbound"]) < 0.25
    assert [e["type"] for e in events if e["type"] in ("dtmf", "stop", "done")] == ["dtmf", "stop", "done"]
    assert next(e for e in events if e["type"] == "stop")["reason"] == "callended"


def test_a_plivo_stream_ends_when_the_socket_closes_and_is_still_transcribed(
    base_stack: Stack, speech: Speech
) -> None:
    stream = speech.stream(8000, (3,))
    call = str(uuid.uuid4())
    frames = call_frames("plivo", {"inbound": encode(stream.path, "mulaw", 8000)}, 160,
                         start=with_call_id("plivo", call))  # fmt: skip
    with connect(f"{base_stack.uri}/plivo", open_timeout=10) as ws:
        for frame in frames:
            ws.send(frame)
    # Closed by the platform at once (Plivo sends no stop): the call still ends with its text.
    events, close_code = read_events(f"{base_stack.uri}/calls/{call}/events")
    assert close_code == 1000
    assert next(e for e in events if e["type"] == "stop")["reason"] == "hangup"
    assert wer(stream.texts[0], texts_by_track(events)["inbound"]) < 0.3


def raw_exchange(uri: str, frames: list[str | bytes]) -> tuple[int | None, str]:
    with connect(uri, open_timeout=10, max_size=None) as ws:
        try:
            for frame in frames:
                ws.send(frame)
            while True:
                ws.recv(timeout=30)
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    ("after_start", "close_code", "says"),
    [
        ('{"event": "media", "media": {"track": "inbound", "payload": "%%%"}}', 1003, "not base64"),
        ('{"event": "transfer"}', 1008, "unknown twilio event"),
        (b"\x00\x01", 1008, "JSON text frames"),
        ("x" * 600_000, 1009, ""),  # over twice --max-frame-bytes: websockets itself refuses it
        ('{"event": "media", "media": {"payload": "' + "A" * 400_000 + '"}}', 1009, "frame of"),
    ],
)
def test_a_bad_frame_closes_its_call_with_a_reason_and_other_calls_go_on(
    base_stack: Stack, speech: Speech, after_start: str | bytes, close_code: int, says: str
) -> None:
    call = f"CA{uuid.uuid4().hex}"
    start = json.dumps(with_call_id("twilio", call))
    good_call = f"CA{uuid.uuid4().hex}"
    stream = speech.stream(8000, (1,))
    good = call_frames("twilio", {"inbound": encode(stream.path, "mulaw", 8000)}, 160,
                       start=with_call_id("twilio", good_call))  # fmt: skip
    other = threading.Thread(target=send_call, args=(f"{base_stack.uri}/twilio", good))
    other.start()
    code, reason = raw_exchange(f"{base_stack.uri}/twilio", [start, after_start])
    assert code == close_code and says in reason
    other.join(120)
    if close_code != 1009 or says:  # the call's own events say why it ended
        events, _ = read_events(f"{base_stack.uri}/calls/{call}/events")
        assert [e["type"] for e in events] == ["start", "error", "done"]
    events, _ = read_events(f"{base_stack.uri}/calls/{good_call}/events")
    assert events[-1]["type"] == "done" and wer(stream.texts[0], texts_by_track(events)["inbound"]) < 0.3


def test_media_before_start_is_refused(base_stack: Stack) -> None:
    media = json.dumps(fixture("twilio")["media"])
    assert raw_exchange(f"{base_stack.uri}/twilio", [media]) == (1008, "media before start")


def twilio_signature(token: str, url: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), url.encode(), hashlib.sha1).digest()).decode()


def test_twilio_signature_is_checked_when_an_auth_token_is_set(base_stack: Stack, tmp_path: Path) -> None:
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--twilio-auth-token", "tw-token", logs=tmp_path)
    try:
        url = f"{uri}/twilio"  # Twilio's <Stream url> takes no query string
        for signature, ok in [
            (twilio_signature("tw-token", url), True),
            (twilio_signature("other", url), False),
        ]:
            headers = {"X-Twilio-Signature": signature}
            if ok:
                with connect(url, open_timeout=10, additional_headers=headers) as ws:
                    assert isinstance(ws, ClientConnection)
            else:
                with pytest.raises(InvalidStatus) as refused:
                    connect(url, open_timeout=10, additional_headers=headers)
                assert refused.value.response.status_code == 403
    finally:
        ingest.stop()


def test_a_reader_of_a_call_that_never_starts_is_told_so(base_stack: Stack, tmp_path: Path) -> None:
    uri, ingest = start_ingest(base_stack.redis_url, POOL, "--idle-timeout", "1", logs=tmp_path)
    try:
        events, close_code = read_events(f"{uri}/calls/CAnosuchcall/events")
        assert close_code == 1008 and [e["code"] for e in events] == ["unknown_call"]
        events, close_code = read_events(f"{uri}/calls/CA1/events?from=yesterday")
        assert close_code == 1008 and [e["code"] for e in events] == ["bad_parameter"]
    finally:
        ingest.stop()


class Receiver(ThreadingHTTPServer):
    """A webhook receiver: refuses the first POST (500), then keeps each body with its headers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.refused == 0:
                    outer.refused += 1
                    self.send_response(500)
                else:
                    outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_finals_reach_a_webhook_signed_retried_and_once_each(
    base_stack: Stack, speech: Speech, tmp_path: Path
) -> None:
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    metrics_port = free_port()
    flags = ("--webhook-url", hook, "--webhook-secret", "shh", "--metrics-port", str(metrics_port))
    uri, ingest = start_ingest(base_stack.redis_url, POOL, *flags, logs=tmp_path)
    try:
        stream = speech.stream(8000, (1, 3))
        call = f"CA{uuid.uuid4().hex}"
        frames = call_frames("twilio", {"inbound": encode(stream.path, "mulaw", 8000)}, 160,
                             start=with_call_id("twilio", call))  # fmt: skip
        assert send_call(f"{uri}/twilio", frames)[0] == 1000
        events, _ = read_events(f"{uri}/calls/{call}/events")
        sent = [e for e in events if e["type"] == "final"]
        wait_until(lambda: len(receiver.received) >= len(sent), 30, "the webhook deliveries")
        assert counter(metrics_port, "stt_webhook_deliveries_total", outcome="delivered") == len(sent)
    finally:
        ingest.stop()
        receiver.shutdown()
    assert receiver.refused == 1  # the first POST failed and was sent again
    bodies = []
    for headers, body in receiver.received:
        signed = headers["x-stt-timestamp"].encode() + b"." + body
        expected = "sha256=" + hmac.new(b"shh", signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-stt-signature"], expected)
        bodies.append(json.loads(body))
    assert [b["call"] for b in bodies] == [call] * len(sent)
    assert [b["event"] for b in bodies] == [{k: v for k, v in e.items() if k != "id"} for e in sent]
