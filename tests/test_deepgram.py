"""Deepgram's live API on ``/v1/listen``: the adapter's golden message sequences (no socket), and
the real deepgram-sdk against a real whisper-base stack, pointed at it by base URL only."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1Configure,
    ListenV1ConfigureFailure,
    ListenV1ConfigureSuccess,
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, KeepAlive
from services.ingest.edge import routes
from services.ingest.protocols.adapter import Opened, Reply
from services.ingest.protocols.deepgram import Deepgram, parse
from services.protocol import Done, Final, Partial, ProtocolError, ServerEvent, SpeechEnded, SpeechStarted
from services.stack import CT2_DIR, Stack, start_ingest
from tools.speech import Speech, wer

TYPES: dict[str, type[BaseModel]] = {
    "ConfigureSuccess": ListenV1ConfigureSuccess,
    "Results": ListenV1Results,
    "Metadata": ListenV1Metadata,
    "SpeechStarted": ListenV1SpeechStarted,
    "UtteranceEnd": ListenV1UtteranceEnd,
    "Error": ListenV1Error,
}


def typed(frame: str | bytes) -> dict[str, Any]:
    """A server frame, validated strictly against the SDK's pydantic type of its ``type``."""
    message: dict[str, Any] = json.loads(frame)
    TYPES[message["type"]].model_validate(message, strict=True)
    return message


# --- the query ---------------------------------------------------------------------------------


def test_a_query_as_the_sdk_sends_it_sets_the_session() -> None:
    query = (
        "model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true&vad_events=true"
        "&utterance_end_ms=1000&endpointing=300&punctuate=true&smart_format=true&language=en-US"
        "&keyterm=Oriserve&keyterm=Hinglish&keywords=refund:2&tag=demo"
    )
    params, options = parse(query)
    assert (params.model, params.encoding, params.sample_rate, params.channels) == (None, "mulaw", 8000, 1)
    assert params.partials and params.words and params.prompt == "Oriserve, Hinglish, refund"
    assert options.vad_events and options.utterance_end and options.endpointing
    assert options.ignored == ("punctuate", "smart_format") and options.tag == ("demo",)


@pytest.mark.parametrize(
    ("model", "pool"),
    [
        ("nova-2-general", None),
        ("nova-3", None),
        ("base", None),
        ("swift", "swift"),
        ("whisper-base-ct2", "whisper-base-ct2"),
    ],
)
def test_deepgram_models_are_the_default_pool_and_ours_choose_theirs(model: str, pool: str | None) -> None:
    assert parse(f"model={model}")[0].model == pool


@pytest.mark.parametrize(
    "query",
    [
        "modle=nova-3",
        "encoding=opus",
        "encoding=wav",
        "sample_rate=44100",
        "channels=2",
        "channels=3&multichannel=true",
        "interim_results=True",
        "endpointing=soon",
        "utterance_end_ms=-1",
        "language=fr",
    ],
)
def test_what_cannot_be_honoured_is_refused(query: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse(query)
    assert refused.value.code == "bad_parameter"


def test_endpointing_false_never_tells_speech_final() -> None:
    adapter = opened("endpointing=false")
    final = Final("hello", 0, 0.5, 1.5, 0.3, ended="silence")
    assert typed(adapter.render(final)[0])["speech_final"] is False


# --- the adapter: golden sequences -------------------------------------------------------------


def opened(query: str, model: str = "whisper-base-ct2") -> Deepgram:
    params, options = parse(query)
    adapter = Deepgram(options, "2026-12-02T14:00:00.000Z")
    assert (
        adapter.greeting(Opened("abc123", model, params, params.partials)) == []
    )  # Deepgram greets with nothing
    return adapter


def test_client_messages_become_the_cores_inputs() -> None:
    adapter = opened("")
    assert adapter.take(b"\x00\x00" * 160) == [Audio(b"\x00\x00" * 160)]
    assert adapter.take('{"type": "KeepAlive"}') == [KeepAlive()]
    assert adapter.take('{"type": "Finalize"}')[0] == Finalize()
    assert adapter.take('{"type": "CloseStream"}') == [EndOfAudio()]
    garbage_frames = ("{not json", "[1, 2]", '{"type": "Configure2"}', '{"kind": "Finalize"}')
    for garbage in (*garbage_frames, '{"type": "Configure", "keyterms": "Oriserve"}'):
        with pytest.raises(ProtocolError) as refused:
            adapter.take(garbage)
        assert refused.value.code == "bad_message"
    assert adapter.idle_timeout() == 10.0


def test_a_session_in_deepgrams_messages() -> None:
    adapter = opened("model=nova-3&interim_results=true&vad_events=true&utterance_end_ms=1000&diarize=true")
    adapter.take(b"\x01\x00" * 16000 * 3)  # 3 s of audio
    words = ({"word": " Hello,", "start": 0.52, "end": 0.9, "confidence": 0.91},)
    events: list[ServerEvent] = [
        SpeechStarted(0.5),
        Partial("Hello", 0, start=0.5, end=1.0),
        SpeechEnded(0, 0.5, 1.2, "silence"),
        Final("Hello,", 0, 0.5, 1.2, 0.4, words=words, confidence=0.91, ended="silence"),
        Final("", 1, 2.0, 2.5, 0.2, ended="finalize", silent=True),
        Done(),
    ]
    sent = [typed(frame) for event in events for frame in adapter.render(event)]
    uuid = sent[1]["metadata"]["model_uuid"]
    model_info = {"name": "whisper-base-ct2", "version": "whisper-base-ct2", "arch": "whisper"}
    metadata = {"request_id": "abc123", "model_info": model_info, "model_uuid": uuid}
    assert sent == [
        {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.5},
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 0.5,
            "start": 0.5,
            "is_final": False,
            "speech_final": False,
            "from_finalize": False,
            "channel": {"alternatives": [{"transcript": "Hello", "confidence": 0.0, "words": []}]},
            "metadata": metadata,
        },
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 0.7,
            "start": 0.5,
            "is_final": True,
            "speech_final": True,
            "from_finalize": False,
            "channel": {
                "alternatives": [
                    {
                        "transcript": "Hello,",
                        "confidence": 0.91,
                        "words": [
                            {
                                "word": "hello",
                                "start": 0.52,
                                "end": 0.9,
                                "confidence": 0.91,
                                "punctuated_word": "Hello,",
                            }
                        ],
                    }
                ]
            },
            "metadata": metadata,
        },
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.9},
        {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": 0.5,
            "start": 2.0,
            "is_final": True,
            "speech_final": False,
            "from_finalize": True,
            "channel": {"alternatives": [{"transcript": "", "confidence": 0.0, "words": []}]},
            "metadata": metadata,
        },
        {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": "abc123",
            "sha256": sent[-1]["sha256"],
            "created": "2026-12-02T14:00:00.000Z",
            "duration": 3.0,
            "channels": 1,
            "models": [uuid],
            "model_info": {uuid: model_info},
            "warnings": [
                {
                    "parameter": "diarize",
                    "type": "ignored",
                    "message": "diarize is accepted and has no effect here",
                }
            ],
        },
    ]


def finalize_answers(adapter: Deepgram) -> list[dict[str, Any]]:
    """What a Finalize is answered with at once (it closes what is open, in the core, too)."""
    taken = adapter.take('{"type": "Finalize"}')
    assert taken[0] == Finalize()
    return [typed(reply.frame) for reply in taken[1:] if isinstance(reply, Reply)]


def test_every_finalize_is_answered_with_a_from_finalize_result() -> None:
    adapter = opened("")
    adapter.take(b"\x00\x00" * 8000)
    # Nothing open: an empty result at once, at the stream's position.
    (answer,) = finalize_answers(adapter)
    assert answer["from_finalize"] and answer["is_final"] and answer["start"] == 0.5
    assert answer["channel"]["alternatives"][0]["transcript"] == ""
    # Speech open that the Finalize closes as noise: an empty result when the core tells so.
    adapter.render(SpeechStarted(0.6))
    assert finalize_answers(adapter) == []
    (dropped,) = [typed(frame) for frame in adapter.render(SpeechEnded(None, 0.6, 0.8, "too_short"))]
    assert dropped["from_finalize"] and dropped["start"] == 0.6 and dropped["duration"] == 0.2
    # Speech open that the Finalize closes as a segment: its final is the answer, and the only one.
    adapter.render(SpeechStarted(1.0))
    assert finalize_answers(adapter) == []
    assert adapter.render(SpeechEnded(0, 1.0, 1.5, "finalize")) == []
    (final,) = [typed(frame) for frame in adapter.render(Final("hi", 0, 1.0, 1.5, 0.2, ended="finalize"))]
    assert final["from_finalize"] and final["channel"]["alternatives"][0]["transcript"] == "hi"
    assert adapter.render(SpeechEnded(None, 2.0, 2.1, "noise")) == []  # no Finalize asked for that


def test_configure_replaces_the_keyterms_and_keeps_the_keywords() -> None:
    adapter = opened("keyterm=Oriserve&keywords=refund:2")
    configure, reply = adapter.take(
        '{"type": "Configure", "keyterms": ["Hinglish", "Swift"], "features": {}}'
    )
    assert configure == Configure("Hinglish, Swift, refund") and isinstance(reply, Reply)
    success = json.loads(reply.frame)
    ListenV1ConfigureSuccess.model_validate(success, strict=True)
    assert success == {"type": "ConfigureSuccess", "request_id": "abc123", "keyterms": ["Hinglish", "Swift"]}
    assert adapter.take('{"type": "Configure", "keyterms": null}')[0] == Configure("Hinglish, Swift, refund")
    (too_long,) = adapter.take(json.dumps({"type": "Configure", "keyterms": ["word"] * 200}))
    assert isinstance(too_long, Reply)  # refused, and the session goes on with the keyterms it had
    failure = json.loads(too_long.frame)
    ListenV1ConfigureFailure.model_validate(failure, strict=True)
    assert failure["code"] == "CONFIGURE_KEYTERM_LIMIT_EXCEEDED" and adapter.keyterms == ("Hinglish", "Swift")


def test_without_interim_results_or_vad_events_neither_is_sent() -> None:
    adapter = opened("")
    assert adapter.render(Partial("Hello", 0)) == []
    assert adapter.render(SpeechStarted(0.5)) == []
    assert adapter.render(SpeechEnded(None, 0.5, 0.6, "noise")) == []


def test_channels_are_told_apart_with_multichannel() -> None:
    adapter = opened("channels=2&multichannel=true")
    final = typed(adapter.render(Final("hi", 0, 0.0, 1.0, 0.1, channel=1, ended="eof"))[0])
    assert final["channel_index"] == [1, 2] and not final["speech_final"]


def test_an_error_is_deepgrams() -> None:
    error = typed(opened("").refusal(ProtocolError("bad_message", "text frame is not JSON")).pop())
    assert error == {"type": "Error", "variant": "bad_message", "description": "text frame is not JSON"}


def test_the_path_is_deepgrams() -> None:
    route = routes.find("/v1/listen")
    assert isinstance(route, routes.ClientRoute) and route.protocol == "deepgram"
    assert route.refuse_at_handshake is not None


# --- end to end: the real SDK against a real stack ----------------------------------------------

POOL = CT2_DIR.name
CHUNK_S = 0.1


def sdk(uri: str, key: str = "any-key") -> DeepgramClient:
    """The SDK as a user points it at us: the base URLs only."""
    http = uri.replace("ws://", "http://")
    environment = DeepgramClientEnvironment(base=http, production=uri, agent=uri, agent_rest=http)
    return DeepgramClient(api_key=key, environment=environment)


def send_audio(send: Any, pcm: bytes, rate: int = 16000, pace: float = 1.0) -> None:
    """``pcm`` in 100 ms frames, ``pace`` times real time (0: as fast as it goes)."""
    step = int(rate * CHUNK_S) * 2
    for at in range(0, len(pcm), step):
        send(pcm[at : at + step])
        if pace:
            time.sleep(CHUNK_S / pace)


def listen(connection: Any) -> tuple[list[Any], threading.Thread]:
    """Read the SDK's parsed messages on a thread, as an application does."""
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(connection), daemon=True)
    reader.start()
    return got, reader


def results(got: list[Any]) -> list[Any]:
    return [m for m in got if isinstance(m, ListenV1Results)]


def test_the_sdk_live_with_interim_results_finalize_keepalive_and_closestream(
    ct2_stack: Stack, speech: Speech
) -> None:
    stream = speech.stream(16000, (5, 1))  # a long sentence (interim results), then a short one
    finalized = speech.stream(16000, (2,))
    end = finalized.utterances[0][1]
    said_then_finalized = finalized.pcm[: int((end + 0.1) * 16000) * 2]  # no pause after it
    with sdk(ct2_stack.uri).listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=16000,
        interim_results="true",
        vad_events="true",
        utterance_end_ms="1000",
        smart_format="true",
    ) as connection:
        got, reader = listen(connection)
        connection.send_configure(ListenV1Configure(keyterms=["Hinglish"]))
        send_audio(connection.send_media, stream.pcm)
        for _ in range(3):  # 12 s of nothing but KeepAlive: past Deepgram's 10 s, still open
            connection.send_keep_alive()
            time.sleep(4)
        send_audio(connection.send_media, said_then_finalized, pace=0)
        connection.send_finalize()
        deadline = time.monotonic() + 60
        while not any(r.from_finalize for r in results(got)) and time.monotonic() < deadline:
            time.sleep(0.1)
        connection.send_close_stream()
        reader.join(60)
    assert not reader.is_alive(), "the stream did not close after CloseStream"
    interim = [r for r in results(got) if not r.is_final]
    finals = [r for r in results(got) if r.is_final]
    assert interim, "no interim result while the long sentence was spoken"
    paused = [r for r in finals if r.speech_final and r.channel.alternatives[0].transcript]
    text = " ".join(r.channel.alternatives[0].transcript for r in paused)
    assert wer(" ".join(stream.texts), text) <= 0.25, text
    words = [w for r in paused for w in r.channel.alternatives[0].words]
    assert words and all(w.start <= w.end and w.punctuated_word for w in words)
    last = [r for r in finals if r.from_finalize]
    assert len(last) == 1 and not last[0].speech_final
    assert wer(finalized.texts[0], last[0].channel.alternatives[0].transcript) <= 0.25
    assert [m for m in got if isinstance(m, ListenV1SpeechStarted)]
    assert [m.keyterms for m in got if isinstance(m, ListenV1ConfigureSuccess)] == [["Hinglish"]]
    assert [m for m in got if isinstance(m, ListenV1UtteranceEnd)]
    metadata = [m for m in got if isinstance(m, ListenV1Metadata)]
    assert got[-1] is metadata[0]  # Metadata last, then the close
    assert metadata[0].duration == pytest.approx(
        (len(stream.pcm) + len(said_then_finalized)) / 32000, abs=0.01
    )
    assert metadata[0].model_info[metadata[0].models[0]]["name"] == POOL
    for message in got:  # every message holds to the SDK's types, strictly
        TYPES[message.type].model_validate(message.model_dump(), strict=True)


def test_keys_in_deepgrams_two_forms(ct2_stack: Stack, speech: Speech, tmp_path: Path) -> None:
    uri, ingest = start_ingest(ct2_stack.redis_url, POOL, "--api-keys", "s3cret", logs=tmp_path)
    try:
        close = json.dumps({"type": "CloseStream"})
        # Authorization: Token KEY, as the SDK sends it.
        with sdk(uri, "s3cret").listen.v1.connect(model="nova-3") as connection:
            got, reader = listen(connection)
            connection.send_close_stream()
            reader.join(30)
        assert isinstance(got[-1], ListenV1Metadata)
        # The SDK means to raise its ApiError, but catches a name websockets 14+ no longer raises.
        with pytest.raises(InvalidStatus) as wrong, sdk(uri, "wrong").listen.v1.connect(model="nova-3"):
            pass
        assert wrong.value.response.status_code == 401
        # Sec-WebSocket-Protocol: token, KEY, as a browser sends it: "token" is selected.
        with connect(f"{uri}/v1/listen", subprotocols=["token", "s3cret"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "token"
            ws.send(close)
            assert json.loads(ws.recv(timeout=30))["type"] == "Metadata"
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{uri}/v1/listen", subprotocols=["token", "wrong"])  # type: ignore[list-item]
        assert refused.value.response.status_code == 401
    finally:
        ingest.stop()
    # A client offering no subprotocol connects as before.
    with connect(f"{ct2_stack.uri}/v1/listen") as ws:
        assert ws.subprotocol is None
        ws.send(close)
        assert json.loads(ws.recv(timeout=30))["type"] == "Metadata"


def test_an_unknown_parameter_is_refused_at_the_handshake(ct2_stack: Stack) -> None:
    for query in ("model=nova-3&modle=x", "encoding=opus&sample_rate=48000"):
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ct2_stack.uri}/v1/listen?{query}")
        response = refused.value.response
        assert response.status_code == 400 and response.headers["dg-error"]
        assert json.loads(response.body)["err_msg"] == response.headers["dg-error"]


def closed_by(uri: str, frames: list[str | bytes]) -> tuple[list[dict[str, Any]], int | None, str]:
    """Send ``frames`` on ``/v1/listen``; what came back, the close code and reason."""
    got = []
    with connect(f"{uri}/v1/listen?model=nova-3") as ws:
        for frame in frames:
            ws.send(frame)
        with contextlib.suppress(ConnectionClosedError):
            for message in ws:
                got.append(typed(message))
    return got, ws.close_code, ws.close_reason or ""


def test_bad_input_closes_that_stream_with_a_code_and_a_reason_and_no_other(
    ct2_stack: Stack, speech: Speech
) -> None:
    stream = speech.stream(16000, (1,))
    with sdk(ct2_stack.uri).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000
    ) as bystander:
        got, reader = listen(bystander)
        bad: list[tuple[list[str | bytes], int]] = [
            (["{not json"], 1008),
            (['{"type": "Shutdown"}'], 1008),
            ([b"\x00\x00\x00"], 1003),  # not whole 16-bit samples: audio in another encoding
        ]
        for frames, code in bad:
            sent, close_code, reason = closed_by(ct2_stack.uri, frames)
            assert close_code == code and reason, (frames, close_code, reason)
            assert [m["type"] for m in sent] == ["Error"] and sent[0]["description"].startswith(reason[:40])
        send_audio(bystander.send_media, stream.pcm, pace=0)
        bystander.send_close_stream()
        reader.join(120)
    text = " ".join(r.channel.alternatives[0].transcript for r in results(got) if r.is_final)
    assert wer(stream.texts[0], text) <= 0.25, text
    assert isinstance(got[-1], ListenV1Metadata)


def test_no_audio_and_no_keepalive_for_10_s_closes_the_stream(ct2_stack: Stack) -> None:
    began = time.monotonic()
    sent, code, reason = closed_by(ct2_stack.uri, [])
    assert 9.5 <= time.monotonic() - began < 20
    assert code == 1008 and "10 s" in reason and sent[0]["variant"] == "idle_timeout"
