"""Deepgram Flux (``/v2/listen``): turn events from our eager endpointing.

In-process: the adapter's golden sequences, each message checked against the official
deepgram-sdk's own pydantic types. End to end: the official SDK's ``listen.v2.connect``, pointed
at a real stack (whisper-base on CTranslate2, real weights) by base URL only, with real speech."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import pytest
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v2.types import (
    ListenV2ConfigureSuccess,
    ListenV2Connected,
    ListenV2FatalError,
    ListenV2TurnInfo,
)

from services.ingest.core.inputs import Audio, Configure, EndOfAudio, Finalize, KeepAlive
from services.ingest.protocols.adapter import Opened, Reply
from services.ingest.protocols.flux import Flux, parse
from services.protocol import (
    EagerEnd,
    ErrorEvent,
    Final,
    Partial,
    ProtocolError,
    ServerEvent,
    SessionParams,
    SpeechEnded,
    SpeechStarted,
    TurnResumed,
)
from services.stack import Stack
from tools.speech import Speech, wer


def turns(flux: Flux, *events: ServerEvent) -> list[tuple[str, int, str]]:
    """(event, turn_index, transcript) of what the adapter sends, each frame validated by the SDK."""
    told = []
    for event in events:
        for frame in flux.render(event):
            info = ListenV2TurnInfo.model_validate(json.loads(frame))
            told.append((info.event, info.turn_index, info.transcript))
    return told


def test_a_turn_is_started_updated_guessed_resumed_and_ended_in_flux_order() -> None:
    params, flux = parse("model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.5")
    assert params.model is None and params.partials and params.sample_rate == 16000
    (connected,) = flux.greeting(Opened("s", "whisper-base", params, True))
    assert ListenV2Connected.model_validate(json.loads(connected)).sequence_id == 0
    told = turns(
        flux,
        SpeechStarted(0.4),
        Partial("please call", 0, start=0.4, end=1.2),
        EagerEnd("please call me", 0, 0.4, 1.6),
        TurnResumed(0, 1.8),
        EagerEnd("please call me back", 0, 0.4, 2.4),
        SpeechEnded(0, 0.4, 2.4, "silence"),
        SpeechStarted(3.0),  # the next turn begins before this one's final: it waits
        Partial("tomorrow", 1, start=3.0, end=3.5),
        Final("please call me back", 0, 0.4, 2.4, 0.5, ended="silence"),
        SpeechEnded(None, 3.0, 3.6, "noise"),  # the next turn was noise: it ends empty
    )
    assert told == [
        ("StartOfTurn", 0, ""),
        ("Update", 0, "please call"),
        ("EagerEndOfTurn", 0, "please call me"),
        ("TurnResumed", 0, "please call me"),
        ("EagerEndOfTurn", 0, "please call me back"),
        ("EndOfTurn", 0, "please call me back"),
        ("StartOfTurn", 1, ""),
        ("Update", 1, "tomorrow"),
        ("EndOfTurn", 1, ""),
    ]
    # Every message counts in sequence_id: Connected was 0.
    frame = flux.render(SpeechStarted(5.0))[0]
    assert json.loads(frame)["sequence_id"] == 1 + len(told)


def test_without_an_eager_threshold_a_turn_only_starts_updates_and_ends() -> None:
    _, flux = parse("model=flux-general-en")
    told = turns(
        flux,
        SpeechStarted(0.4),
        EagerEnd("hello", 0, 0.4, 1.0),
        TurnResumed(0, 1.1),
        SpeechEnded(0, 0.4, 1.4, "finalize"),
        Final("hello there", 0, 0.4, 1.4, 0.3, ended="finalize"),
    )
    assert told == [("StartOfTurn", 0, ""), ("EndOfTurn", 0, "hello there")]


def test_a_lost_transcript_still_ends_its_turn_and_releases_the_next() -> None:
    _, flux = parse("model=flux-general-en")
    told = turns(
        flux,
        SpeechStarted(0.4),
        SpeechEnded(0, 0.4, 1.4, "silence"),
        SpeechStarted(2.0),
        ErrorEvent("timeout", "no transcript", 0),
    )
    assert told == [("StartOfTurn", 0, ""), ("EndOfTurn", 0, ""), ("StartOfTurn", 1, "")]


def test_client_messages_become_the_core_inputs_and_configure_is_acknowledged() -> None:
    _, flux = parse("model=flux-general-en&keyterm=Kotak")
    assert flux.take(b"\0\0") == [Audio(b"\0\0")]
    assert flux.take('{"type": "CloseStream"}') == [EndOfAudio()]
    assert flux.take('{"type": "ForceEndTurn"}') == [Finalize()]
    assert flux.take('{"type": "KeepAlive"}') == [KeepAlive()]
    configure, reply = flux.take(
        '{"type": "Configure", "thresholds": {"eager_eot_threshold": 0.4}, "keyterms": ["HDFC"]}'
    )
    assert configure == Configure("HDFC") and isinstance(reply, Reply)
    ack = ListenV2ConfigureSuccess.model_validate(json.loads(reply.frame))
    assert (
        ack.keyterms == ["HDFC"] and ack.thresholds.eager_eot_threshold == 0.4 and flux.eager_threshold == 0.4
    )
    for bad in ("not json", "[1]", '{"type": "Flush"}', '{"type": "Configure", "keyterms": "HDFC"}'):
        with pytest.raises(ProtocolError) as error:
            flux.take(bad)
        (frame,) = flux.refusal(error.value)
        assert ListenV2FatalError.model_validate(json.loads(frame)).code == "BAD_MESSAGE"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("encoding=linear16", "model is required"),
        ("model=flux-general-en&encoding=opus", "not decoded here"),
        ("model=flux-general-en&sample_rate=44100", "sample_rate=44100"),
        ("model=flux-general-en&eager_eot_threshold=2", "between 0.3 and 0.9"),
        ("model=flux-general-en&interim_results=true", "unknown parameter 'interim_results'"),
    ],
)
def test_a_query_flux_cannot_honour_is_refused(query: str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        parse(query)


def environment(stack: Stack) -> DeepgramClientEnvironment:
    http = stack.uri.replace("ws://", "http://")
    return DeepgramClientEnvironment(base=http, production=stack.uri, agent=stack.uri, agent_rest=http)


def test_the_deepgram_sdk_hears_turns_of_real_speech_from_a_flux_stream(
    speech: Speech, ct2_stack: Stack
) -> None:
    """The official SDK, base URL only: a turn per sentence, each ending with its words."""
    stream = speech.stream(16000, (0, 1))
    client = DeepgramClient(api_key="any-key", environment=environment(ct2_stack))
    received: list[tuple[float, Any]] = []
    with client.listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate="16000", eager_eot_threshold="0.5"
    ) as socket:
        reader = threading.Thread(target=lambda: received.extend((time.monotonic(), m) for m in socket))
        reader.start()
        chunk = 16000 * 2 // 10  # 100 ms, in real time: the pauses are heard as they happen
        for i in range(0, len(stream.pcm), chunk):
            socket.send_media(stream.pcm[i : i + chunk])
            time.sleep(0.1)
        socket.send_close_stream()
        reader.join(timeout=60)
    messages = [m for _, m in received]
    assert messages[0].type == "Connected"
    infos = [m for m in messages if m.type == "TurnInfo"]
    ends = [m for m in infos if m.event == "EndOfTurn" and m.transcript]
    assert [m.turn_index for m in ends] == sorted({m.turn_index for m in ends}), infos
    assert wer(" ".join(stream.texts), " ".join(m.transcript for m in ends)) <= 0.3, [
        m.transcript for m in ends
    ]
    for index in {m.turn_index for m in infos}:
        events = [m.event for m in infos if m.turn_index == index]
        assert events[0] == "StartOfTurn" and events[-1] == "EndOfTurn" and events.count("EndOfTurn") == 1
    # Flux's promise: an EndOfTurn's transcript is that of the EagerEndOfTurn just before it.
    for before, after in itertools.pairwise(infos):
        if after.event == "EndOfTurn" and before.event == "EagerEndOfTurn":
            assert after.transcript == before.transcript


def test_params_of_a_pool_name_choose_the_pool() -> None:
    params, _ = parse("model=whisper-base")
    assert params == SessionParams(model="whisper-base", partials=True)
