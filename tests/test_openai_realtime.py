"""OpenAI Realtime transcription (``/v1/realtime?intent=transcription``).

In-process: the adapter's golden sequences, each server event validated by the official openai
SDK's own pydantic types. End to end: the SDK's realtime client (``client.realtime.connect``),
pointed at a real stack (whisper-base on CTranslate2, real weights) by ``websocket_base_url``
only, with real speech at 24 kHz; manual commits; bad input answered in OpenAI's error shape."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import numpy as np
import pytest
from openai import OpenAI
from openai.types.realtime import RealtimeErrorEvent, RealtimeServerEvent
from pydantic import TypeAdapter

from services.audio import StreamResampler
from services.ingest.core.inputs import Audio, Configure, Finalize
from services.ingest.protocols.adapter import Opened, Reply
from services.ingest.protocols.openai_realtime import OpenAIRealtime, parse
from services.protocol import ErrorEvent, Final, Partial, ProtocolError, SpeechEnded, SpeechStarted
from services.stack import Stack
from tools.speech import Speech, wer

PCM_16K = {"type": "audio/pcm", "rate": 16000}  # not a rate OpenAI takes
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def sdk(frame: str | bytes) -> Any:
    """A server event as the SDK's own type (raises if the SDK's model would not parse it)."""
    return SERVER_EVENT.validate_python(json.loads(frame))


def opened() -> tuple[OpenAIRealtime, Any]:
    params, adapter = parse("intent=transcription")
    (created,) = adapter.greeting(Opened("0f3c-session", "whisper-base", params, True))
    return adapter, sdk(created)


def append(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def replies(taken: list[Any]) -> list[Any]:
    return [sdk(t.frame) for t in taken if isinstance(t, Reply)]


def test_the_session_opens_at_16k_linear16_and_is_created_as_a_transcription_session() -> None:
    _, created = opened()
    params, _ = parse("intent=transcription")
    assert (params.sample_rate, params.encoding, params.partials, params.model) == (
        16000,
        "linear16",
        True,
        None,
    )
    assert created.type == "session.created" and created.session.type == "transcription"
    assert created.session.audio.input.format.type == "audio/pcm"
    assert created.session.audio.input.transcription.model == "whisper-base"


@pytest.mark.parametrize(
    ("query", "pool"),
    [
        ("", None),
        ("model=gpt-4o-transcribe&intent=transcription", None),
        ("model=whisper-base", "whisper-base"),
    ],
)
def test_the_url_needs_no_model_and_a_pool_name_chooses_the_pool(query: str, pool: str | None) -> None:
    assert parse(query)[0].model == pool


@pytest.mark.parametrize(
    ("query", "says"), [("intent=conversation", "only transcribes"), ("call_id=x", "unknown parameter")]
)
def test_a_query_that_cannot_be_honoured_is_refused(query: str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        parse(query)


def test_audio_is_decoded_and_resampled_to_16k_in_every_format() -> None:
    adapter, _ = opened()
    pcm24 = (np.sin(np.arange(24000) / 10) * 8000).astype("<i2").tobytes()  # 1 s at 24 kHz
    out = b"".join(
        t.data
        for chunk in range(0, len(pcm24), 4801)
        for t in adapter.take(append(pcm24[chunk : chunk + 4801]))
        if isinstance(t, Audio)
    )
    update = {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
    }
    flushed, updated = adapter.take(json.dumps(update))
    assert isinstance(flushed, Audio) and isinstance(updated, Reply)
    # 1 s at 16 kHz, odd-byte chunks and all, after the resampler's lead (services.audio)
    assert len(out + flushed.data) == (16000 + StreamResampler(24000).lead) * 2
    assert sdk(updated.frame).session.audio.input.format.type == "audio/pcmu"
    (mulaw,) = adapter.take(append(b"\xff" * 8000))  # 1 s of G.711 mu-law at 8 kHz
    assert isinstance(mulaw, Audio) and abs(len(mulaw.data) - 32000) <= 2 * 96 * 2


def test_commit_finalizes_clear_is_acknowledged_and_a_prompt_configures() -> None:
    adapter, _ = opened()
    assert adapter.take(json.dumps({"type": "input_audio_buffer.commit"})) == [Finalize()]
    (cleared,) = replies(adapter.take(json.dumps({"type": "input_audio_buffer.clear"})))
    assert cleared.type == "input_audio_buffer.cleared"
    transcription = {"model": "gpt-4o-transcribe", "prompt": "Oriserve, EMI", "language": "hi"}
    session = {
        "type": "transcription",
        "audio": {"input": {"transcription": transcription, "turn_detection": None}},
    }
    configure, reply = adapter.take(json.dumps({"type": "session.update", "session": session}))
    assert configure == Configure("Oriserve, EMI")
    updated = sdk(reply.frame)  # type: ignore[union-attr]
    assert updated.type == "session.updated" and updated.session.audio.input.turn_detection is None
    assert updated.session.audio.input.transcription.language == "hi"


def test_the_beta_transcription_session_update_is_taken_too() -> None:
    adapter, _ = opened()
    session = {"input_audio_format": "g711_alaw", "input_audio_transcription": {"prompt": "Jio"}}
    configure, reply = adapter.take(json.dumps({"type": "transcription_session.update", "session": session}))
    assert configure == Configure("Jio") and isinstance(reply, Reply)
    assert json.loads(reply.frame)["type"] == "transcription_session.updated"
    assert adapter.input["format"] == {"type": "audio/pcma"}


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        (b"\x00\x01", "invalid_event", None),
        ("{nope", "invalid_json", None),
        ('{"type": "response.create", "event_id": "mine"}', "invalid_value", "type"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value", "audio"),
        ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value", "session.type"),
        (
            json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": PCM_16K}}}}),
            "invalid_value",
            "session.audio.input.format.rate",
        ),
    ],
)
def test_bad_input_is_an_error_event_in_openais_shape_and_the_session_goes_on(
    frame: str | bytes, code: str, param: str | None
) -> None:
    adapter, _ = opened()
    (error,) = replies(adapter.take(frame))
    assert isinstance(error, RealtimeErrorEvent)
    assert (error.error.type, error.error.code, error.error.param) == ("invalid_request_error", code, param)
    assert error.error.event_id == ("mine" if "mine" in str(frame) else None)
    assert adapter.take(json.dumps({"type": "input_audio_buffer.commit"})) == [Finalize()]


def told(adapter: OpenAIRealtime, *events: Any) -> list[tuple[str, str, str | None]]:
    """(type, item_id, delta or transcript) of what the adapter sends, each parsed by the SDK."""
    out = []
    for event in events:
        for frame in adapter.render(event):
            message = sdk(frame)
            assert message.event_id
            text = getattr(message, "delta", None) or getattr(message, "transcript", None)
            out.append((message.type, getattr(message, "item_id", ""), text))
    return out


def test_speech_is_an_item_started_stopped_committed_with_deltas_and_completed() -> None:
    adapter, _ = opened()
    sequence = told(
        adapter,
        SpeechStarted(1.0),
        Partial("hello", 0, start=1.0, end=1.5),
        Partial("hello wor...", 0, start=1.0, end=2.0),  # the ellipsis is left out
        Partial("hello world and", 0, start=1.0, end=2.1),
        Partial("Hello world", 0, start=1.0, end=2.2),  # rewritten: the whole text again
        SpeechEnded(0, 1.0, 2.5, "silence"),
        Final("Hello world.", 0, 1.0, 2.5, 0.3, ended="silence"),
    )
    item = sequence[0][1]
    assert item.startswith("item_")
    assert sequence == [
        ("input_audio_buffer.speech_started", item, None),
        ("conversation.item.input_audio_transcription.delta", item, "hello"),
        ("conversation.item.input_audio_transcription.delta", item, " wor"),
        ("conversation.item.input_audio_transcription.delta", item, "ld and"),
        ("conversation.item.input_audio_transcription.delta", item, "Hello world"),
        ("input_audio_buffer.speech_stopped", item, None),
        ("input_audio_buffer.committed", item, None),
        ("conversation.item.input_audio_transcription.completed", item, "Hello world."),
    ]


def test_items_chain_noise_completes_empty_and_a_lost_transcript_fails_its_item() -> None:
    adapter, _ = opened()
    first = [
        sdk(f) for e in (SpeechStarted(0.5), SpeechEnded(None, 0.5, 0.7, "noise")) for f in adapter.render(e)
    ]
    assert [m.type for m in first][1:] == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ]
    committed, completed = first[2], first[3]
    assert committed.previous_item_id is None and completed.transcript == ""
    assert (committed.audio_start_ms, committed.audio_end_ms) == (500, 700)
    second = [
        sdk(f) for e in (SpeechStarted(3.0), SpeechEnded(4, 3.0, 4.0, "silence")) for f in adapter.render(e)
    ]
    assert second[2].previous_item_id == committed.item_id
    (failed,) = [sdk(f) for f in adapter.render(ErrorEvent("timeout", "no transcript in time", segment=4))]
    assert failed.type == "conversation.item.input_audio_transcription.failed"
    assert failed.item_id == second[0].item_id and failed.error.code == "timeout"


# --- end to end, with the official SDK ---------------------------------------------------------


def sdk_client(stack: Stack) -> OpenAI:
    return OpenAI(api_key="any-key", websocket_base_url=stack.uri.rstrip("/") + "/v1")


def converse(stack: Stack, send: Any, until: Any, timeout: float = 60) -> list[Any]:
    """Open a realtime transcription session, run ``send(connection)``, and read its events until
    ``until(events)`` holds; return every event the SDK parsed."""
    received: list[Any] = []
    with sdk_client(stack).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        reader = threading.Thread(target=lambda: received.extend(connection), daemon=True)
        reader.start()
        send(connection)
        deadline = time.monotonic() + timeout
        while not until(received) and time.monotonic() < deadline:
            time.sleep(0.1)
    return received


def kinds(events: list[Any], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


def all_completed(events: list[Any]) -> bool:
    committed = {e.item_id for e in kinds(events, "input_audio_buffer.committed")}
    completed = {e.item_id for e in kinds(events, "conversation.item.input_audio_transcription.completed")}
    return bool(committed) and committed <= completed


def test_the_openai_sdk_transcribes_real_speech_at_24k_with_server_vad(
    speech: Speech, ct2_stack: Stack
) -> None:
    stream = speech.stream(24000, (0, 1))

    def send(connection: Any) -> None:
        turn = {"type": "server_vad", "silence_duration_ms": 500}
        transcription = {"model": "gpt-4o-transcribe", "language": "en"}
        audio_input = {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": transcription,
            "turn_detection": turn,
        }
        connection.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
        chunk = 24000 * 2 // 10  # 100 ms, in real time: the pauses are heard as they happen
        for i in range(0, len(stream.pcm), chunk):
            connection.input_audio_buffer.append(audio=base64.b64encode(stream.pcm[i : i + chunk]).decode())
            time.sleep(0.1)

    events = converse(ct2_stack, send, all_completed)
    assert [e.type for e in events[:2]] == ["session.created", "session.updated"]
    assert events[1].session.audio.input.turn_detection.silence_duration_ms == 500
    completed = [
        e for e in kinds(events, "conversation.item.input_audio_transcription.completed") if e.transcript
    ]
    assert wer(" ".join(stream.texts), " ".join(e.transcript for e in completed)) <= 0.3, completed
    assert kinds(events, "conversation.item.input_audio_transcription.delta"), "no deltas"
    started = kinds(events, "input_audio_buffer.speech_started")
    for (start, _), event in zip(stream.utterances, started, strict=False):
        assert abs(event.audio_start_ms / 1000 - start) < 0.5, (start, event)
    for item in {e.item_id for e in completed}:
        order = [e.type.rsplit(".", 1)[-1] for e in events if getattr(e, "item_id", None) == item]
        assert order[:1] == ["speech_started"] and order[-1] == "completed", order
        assert order.index("speech_stopped") < order.index("committed"), order


def test_a_manual_commit_transcribes_and_bad_input_leaves_this_session_and_others_going(
    speech: Speech, ct2_stack: Stack
) -> None:
    stream = speech.stream(24000, (1,))
    _, end = stream.utterances[0]
    spoken = stream.pcm[: int((end + 0.05) * 24000) * 2]  # no pause after it: only the commit ends it

    def send(connection: Any) -> None:
        connection.session.update(
            session={"type": "transcription", "audio": {"input": {"turn_detection": None}}}
        )
        connection.send_raw(b"\x00\x01")
        connection.send_raw("{nope")
        connection.send_raw(json.dumps({"type": "response.create", "event_id": "evt_1"}))
        connection.input_audio_buffer.append(audio="not base64!")
        for i in range(0, len(spoken), 9600):
            connection.input_audio_buffer.append(audio=base64.b64encode(spoken[i : i + 9600]).decode())
        connection.input_audio_buffer.commit()

    with sdk_client(ct2_stack).realtime.connect(extra_query={"intent": "transcription"}) as other:
        assert other.recv().type == "session.created"
        events = converse(ct2_stack, send, all_completed)
        other.session.update(session={"type": "transcription"})  # another session, unaffected
        assert other.recv().type == "session.updated"
    errors = kinds(events, "error")
    assert [(e.error.type, e.error.code) for e in errors] == [
        ("invalid_request_error", "invalid_event"),
        ("invalid_request_error", "invalid_json"),
        ("invalid_request_error", "invalid_value"),
        ("invalid_request_error", "invalid_value"),
    ], errors
    assert errors[2].error.event_id == "evt_1" and errors[3].error.param == "audio"
    (completed,) = kinds(events, "conversation.item.input_audio_transcription.completed")
    assert wer(stream.texts[0], completed.transcript) <= 0.3, completed
