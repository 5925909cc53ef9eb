"""The file routes' pure layer (Deepgram pre-recorded, OpenAI transcriptions) against the real SDKs'
own request building, response types and SSE decoder, over mock transports (no server); and the
file client, a real process, against a small fake OpenAI server on port 0."""

from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import openai
import pytest
import soundfile
from deepgram import DeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.types.listen_v1response import ListenV1Response
from openai._streaming import SSEDecoder
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
)

from services.ingest.protocols import deepgram, deepgram_files, files, openai_files
from services.ingest.protocols.adapter import Opened
from services.ingest.protocols.files import FileInfo
from services.protocol import Done, Final, ProtocolError, SessionParams

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "transcribe.py"
REQUEST_ID = "0b7c6f0e-9a0f-4f51-8a63-2d3e1f0f8c11"
POOLS = frozenset({"swift", "whisper-base"})


def word(text: str, start: float, end: float, confidence: float = 0.9) -> dict[str, Any]:
    return {"word": text, "start": start, "end": end, "confidence": confidence}


# Two channels, out of time order, one empty (noise): the shape a handler collects.
AAP = (word(" aap", 2.5, 2.9), word(" kaise", 2.9, 3.3), word(" ho?", 3.3, 3.75))
NAMASTE = (word(" Namaste,", 0.25, 0.8, 0.95), word(" duniya.", 0.8, 1.5, 0.85))
FINALS = [
    Final("aap kaise ho?", 2, 2.5, 3.75, 0.3, channel=1, words=AAP, confidence=0.8),
    Final("Namaste, duniya.", 0, 0.25, 1.5, 0.2, words=NAMASTE, confidence=0.9),
    Final("", 1, 1.75, 2.0, 0.1, silent=True),
    Final("theek hai", 3, 4.0, 4.5, 0.2),  # no words timed: no confidence
]


def info(channels: int = 2, language: str | None = "hi") -> FileInfo:
    return FileInfo(REQUEST_ID, "2026-12-01T09:30:00.123Z", 5.2, channels, "ab" * 32, "swift", language)


# --- shared ------------------------------------------------------------------------------------


def test_the_transcript_is_the_texts_in_time_order_without_the_empty_ones() -> None:
    assert files.transcript(FINALS) == "Namaste, duniya. aap kaise ho? theek hai"
    assert files.transcript(FINALS, channel=1) == "aap kaise ho?"
    assert [f.segment for f in files.spoken(FINALS)] == [0, 2, 3]


def test_created_is_iso_utc_with_a_z() -> None:
    moment = datetime(2026, 12, 1, 15, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert files.iso_utc(moment) == "2026-12-01T09:30:00.123Z"


def client_subtitles() -> Any:
    """clients/subtitles.py, as the clients import it (a script's sibling, not a package's module)."""
    spec = importlib.util.spec_from_file_location("client_subtitles", ROOT / "clients" / "subtitles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["srt", "vtt"])
@pytest.mark.parametrize("role", [None, "agent"])
def test_the_servers_subtitles_are_the_clients(kind: str, role: str | None) -> None:
    finals = [Final(f.text, f.segment, f.start, f.end, 0.0, f.channel, role) for f in FINALS]
    mono = [f for f in finals if f.channel == 0]
    for chosen in (finals, mono):
        as_sent = [
            {"text": f.text, "start": f.start, "end": f.end, "channel": f.channel}
            | ({"role": f.role} if f.role else {})
            for f in chosen
        ]
        assert files.subtitles(chosen, kind) == client_subtitles().render(as_sent, f".{kind}")


# --- Deepgram: the query -----------------------------------------------------------------------


def test_a_pre_recorded_query_sets_the_session_and_the_options() -> None:
    session, options = deepgram_files.parse(
        "model=swift&multichannel=true&utterances=true&paragraphs=true&detect_language=true"
        "&keyterm=Oriserve&keywords=Hinglish:2&tag=batch&tag=nightly&extra=team:voice&language=hi"
    )
    assert session.model == "swift" and session.words and not session.partials
    assert session.prompt == "Oriserve, Hinglish"
    assert options.multichannel and options.utterances and options.paragraphs and options.detect_language
    assert options.tag == ("batch", "nightly") and options.extra == (("team", "voice"),)
    assert options.encoding is None and options.sample_rate is None and options.channels is None
    assert options.approximated == ("language=hi",) and options.ignored == ()
    assert deepgram_files.parse("model=nova-3")[0].model is None  # Deepgram's names: the default pool


def test_raw_audio_keeps_its_encoding_rate_and_channels() -> None:
    _, options = deepgram_files.parse("encoding=mulaw&sample_rate=8000&channels=2&multichannel=true")
    assert (options.encoding, options.sample_rate, options.channels) == ("mulaw", 8000, 2)


def test_live_only_and_unimplemented_parameters_are_accepted_and_told_as_ignored() -> None:
    session, options = deepgram_files.parse(
        "interim_results=true&endpointing=300&utterance_end_ms=1000&vad_events=true&no_delay=true"
        "&smart_format=true&summarize=v2&sentiment=true&topics=true&custom_topic=x&custom_topic_mode=strict"
        "&intents=true&custom_intent=y&custom_intent_mode=extended&measurements=true&diarize=true"
        "&callback_method=PUT&utt_split=1.5&mip_opt_out=true&version=latest&redact=pci"
    )
    assert not session.partials  # interim results: none for a file
    assert set(options.ignored) == {
        *("interim_results", "endpointing", "utterance_end_ms", "vad_events", "no_delay"),
        *("smart_format", "summarize", "sentiment", "topics", "custom_topic", "custom_topic_mode"),
        *("intents", "custom_intent", "custom_intent_mode", "measurements", "diarize", "callback_method"),
        *("mip_opt_out", "version", "redact"),
    }
    assert options.approximated == ("utt_split=1.5",)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("callback=https://example.com/hook", "calls nothing outside"),
        ("speed=2", "unknown parameter 'speed'"),
        ("utterances=yes", "expected true or false"),
        ("paragraphs=1", "expected true or false"),
        ("utt_split=soon", "expected a number"),
        ("utt_split=-1", "between 0 and 60"),
        ("extra=novalue", "key:value"),
        ("encoding=linear16", "needs its sample_rate"),
        ("encoding=opus&sample_rate=48000", "not decoded here"),
        ("sample_rate=44100&encoding=linear16", "sample_rate=44100"),
        ("channels=2", "add multichannel=true"),
        ("language=fr", "Hindi and English"),
    ],
)
def test_a_query_that_cannot_be_honoured_is_refused(query: str, said: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        deepgram_files.parse(query)
    assert refused.value.code == "bad_parameter" and said in refused.value.message


def test_the_refusal_is_deepgrams_body_and_headers() -> None:
    message = "callback: this service calls nothing outside — leave it out"
    assert deepgram_files.error_body(message, REQUEST_ID) == {
        "err_code": "Bad Request",
        "err_msg": message,
        "request_id": REQUEST_ID,
    }
    headers = deepgram_files.error_headers(message, REQUEST_ID)
    assert headers["dg-request-id"] == REQUEST_ID and headers["dg-error"].isascii()
    assert "send the audio itself" in deepgram_files.URL_REFUSED


# --- Deepgram: the response --------------------------------------------------------------------


def dg_typed(body: dict[str, Any]) -> ListenV1Response:
    """The response, validated strictly by the SDK's type of transcribe_file's answer (``created``
    read first: strict mode takes a datetime for it, not its ISO text)."""
    sent = json.loads(json.dumps(body))
    sent["metadata"]["created"] = datetime.fromisoformat(sent["metadata"]["created"])
    return ListenV1Response.model_validate(sent, strict=True)


def test_a_mono_response_holds_every_final_in_one_channel() -> None:
    _, options = deepgram_files.parse("")
    body = deepgram_files.response(info(channels=1), options, FINALS)
    response = dg_typed(body)
    assert response.metadata.request_id == REQUEST_ID and response.metadata.duration == 5.2
    assert response.metadata.created.year == 2026 and response.metadata.channels == 1
    [channel] = response.results.channels
    assert channel.alternatives is not None
    [alternative] = channel.alternatives
    assert alternative.transcript == "Namaste, duniya. aap kaise ho? theek hai"
    assert alternative.confidence == pytest.approx(0.85)  # the mean of the finals that have one
    assert alternative.words is not None
    assert [(w.word, w.start, w.end) for w in alternative.words[:2]] == [
        ("namaste", 0.25, 0.8),
        ("duniya", 0.8, 1.5),
    ]
    assert body["results"]["channels"][0]["alternatives"][0]["words"][0]["punctuated_word"] == "Namaste,"
    assert response.results.utterances is None and "detected_language" not in body["results"]["channels"][0]


def test_the_model_is_named_as_the_live_adapter_names_it() -> None:
    live = deepgram.Deepgram(deepgram.Options(), "2026-12-01T09:30:00.123Z")
    live.greeting(Opened(REQUEST_ID, "swift", SessionParams(), partials=False))
    [metadata] = live.render(Done())
    told = json.loads(metadata)
    body = deepgram_files.response(info(), deepgram_files.parse("")[1], FINALS)
    assert (body["metadata"]["models"], body["metadata"]["model_info"]) == (
        told["models"],
        told["model_info"],
    )


def test_multichannel_utterances_paragraphs_language_tags_extra_and_warnings() -> None:
    _, options = deepgram_files.parse(
        "multichannel=true&utterances=true&paragraphs=true&detect_language=true&tag=a&extra=k:v&smart_format=true"
    )
    body = deepgram_files.response(info(), options, FINALS)
    response = dg_typed(body)
    transcripts = []
    for channel in response.results.channels:
        assert channel.alternatives is not None and channel.detected_language == "hi"
        transcripts.append(channel.alternatives[0].transcript)
    assert transcripts == ["Namaste, duniya. theek hai", "aap kaise ho?"]
    paragraphs = response.results.channels[0].alternatives[0].paragraphs  # type: ignore[index]
    assert paragraphs is not None and paragraphs.paragraphs is not None
    assert [p.start for p in paragraphs.paragraphs] == [0.25, 4.0]
    assert response.results.utterances is not None
    utterances = response.results.utterances
    assert [(u.channel, u.transcript) for u in utterances] == [
        (0, "Namaste, duniya."),
        (1, "aap kaise ho?"),
        (0, "theek hai"),
    ]
    assert len({u.id for u in utterances}) == 3 and utterances[1].words is not None
    assert utterances[1].words[2].punctuated_word == "ho?"
    assert response.metadata.tags == ["a"] and body["metadata"]["extra"] == {"k": "v"}
    assert body["metadata"]["warnings"][0]["parameter"] == "smart_format"


def test_a_file_with_no_speech_is_an_empty_transcript() -> None:
    _, options = deepgram_files.parse("multichannel=true&utterances=true&paragraphs=true")
    response = dg_typed(deepgram_files.response(info(), options, []))
    assert [c.alternatives[0].transcript for c in response.results.channels] == ["", ""]  # type: ignore[index]
    assert response.results.utterances == []


def test_the_deepgram_sdk_sends_a_query_we_read_and_reads_our_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        _, options = deepgram_files.parse(request.url.query.decode())
        return httpx.Response(200, json=deepgram_files.response(info(), options, FINALS))

    environment = DeepgramClientEnvironment(
        base="http://stt.test",
        production="ws://stt.test",
        agent="ws://stt.test",
        agent_rest="http://stt.test",
    )
    client = DeepgramClient(
        api_key="KEY",
        environment=environment,
        httpx_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    answer = client.listen.v1.media.transcribe_file(
        request=b"RIFF....WAVE",
        model="nova-3",
        multichannel=True,
        utterances=True,
        utt_split=0.5,
        paragraphs=True,
        smart_format=True,
        tag=["batch"],
        extra=["team:voice"],
        keyterm=["Oriserve"],
        detect_language=True,
    )
    assert isinstance(answer, ListenV1Response)
    assert answer.results.utterances is not None and len(answer.results.utterances) == 3
    assert seen[0].url.path == "/v1/listen" and seen[0].method == "POST"


# --- OpenAI: the form --------------------------------------------------------------------------


def form_of(request: httpx2.Request) -> dict[str, list[str]]:
    """A multipart request's fields (not its file), as a server's form reader gives them."""
    raw = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    fields: dict[str, list[str]] = {}
    for part in message.iter_parts():
        if part.get_filename() is None:
            name = str(part.get_param("name", header="content-disposition"))
            fields.setdefault(name, []).append(str(part.get_content()))
    return fields


Handler = Callable[[httpx2.Request], httpx2.Response]


def openai_client(handler: Handler) -> openai.OpenAI:
    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="KEY",
        base_url="http://stt.test/v1",
        http_client=httpx2.Client(transport=transport),
        max_retries=0,
    )


def sent_form(**options: Any) -> dict[str, list[str]]:
    """The fields the openai SDK sends for ``transcriptions.create(**options)``."""
    forms: list[dict[str, list[str]]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        forms.append(form_of(request))
        return httpx2.Response(200, json={"text": ""})

    openai_client(handler).audio.transcriptions.create(file=("a.wav", b"RIFF"), **options)
    return forms[0]


def test_the_sdks_encoding_of_list_and_object_fields_is_read() -> None:
    form = sent_form(
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        include=["logprobs"],
        chunking_strategy={"type": "server_vad", "threshold": 0.5},
        keywords=["Oriserve", "Hinglish"],
        temperature=0.2,
        prompt="Namaste",
        language="hi",
    )
    assert form["timestamp_granularities[]"] == ["word", "segment"] and "chunking_strategy[type]" in form
    request = openai_files.parse(form, POOLS)
    assert request.params == SessionParams(model=None, words=True, prompt="Namaste, Oriserve, Hinglish")
    assert (request.words, request.segments, request.language) == (True, True, "hi")
    assert request.ignored == ("temperature", "include", "chunking_strategy")
    assert not request.stream


def test_the_bare_list_form_is_read_too() -> None:
    request = openai_files.parse(
        {"model": ["whisper-1"], "response_format": ["verbose_json"], "timestamp_granularities": ["word"]},
        POOLS,
    )
    assert request.words and not request.segments


@pytest.mark.parametrize(
    ("model", "pool"),
    [
        ("whisper-1", None),
        ("gpt-4o-transcribe", None),
        ("gpt-4o-mini-transcribe", None),
        ("gpt-4o-transcribe-diarize", None),
        ("swift", "swift"),
        ("Oriserve/Whisper-Hindi2Hinglish-Swift", "swift"),
        ("whisper-base", "whisper-base"),
    ],
)
def test_openais_model_names_are_the_default_pool_and_ours_choose_one(model: str, pool: str | None) -> None:
    assert openai_files.parse({"model": [model]}, POOLS).params.model == pool


def test_stream_is_honoured_for_json_and_text_and_ignored_for_the_rest() -> None:
    form = sent_form(model="whisper-1", stream=True, timestamp_granularities=["word"])
    assert form["stream"] == ["true"]
    streamed = openai_files.parse(form, POOLS)
    assert streamed.stream and streamed.words and streamed.params.words  # the deltas carry words
    for kind, stream in (("text", True), ("srt", False), ("vtt", False), ("verbose_json", False)):
        request = openai_files.parse(
            {"model": ["whisper-1"], "stream": ["true"], "response_format": [kind]}, POOLS
        )
        assert request.stream is stream


GRANULARITIES = "timestamp_granularities[]"
VERBOSE = {"model": ["whisper-1"], "response_format": ["verbose_json"]}


@pytest.mark.parametrize(
    ("fields", "param", "said"),
    [
        ({}, "model", "must provide a model"),
        ({"model": ["prime"]}, "model", "not served here"),
        ({"model": ["whisper-1"], "speed": ["2"]}, "speed", "Unrecognized request argument"),
        ({"model": ["whisper-1"], "response_format": ["diarized_json"]}, "response_format", "speakers apart"),
        ({"model": ["whisper-1"], "response_format": ["xml"]}, "response_format", "one of json"),
        ({"model": ["whisper-1"], "timestamp_granularities[]": ["word"]}, GRANULARITIES, "verbose_json"),
        (VERBOSE | {GRANULARITIES: ["char"]}, GRANULARITIES, "one of word"),
        ({"model": ["whisper-1"], "language": ["fr"]}, "language", "Hindi and English"),
        ({"model": ["whisper-1"], "languages[]": ["hi", "de"]}, "languages[]", "Hindi and English"),
        ({"model": ["whisper-1"], "temperature": ["hot"]}, "temperature", "not a number"),
        ({"model": ["whisper-1"], "temperature": ["1.5"]}, "temperature", "between 0 and 1"),
        ({"model": ["whisper-1"], "stream": ["yes"]}, "stream", "true or false"),
        ({"model": ["whisper-1"], "include[]": ["everything"]}, "include[]", "logprobs"),
        ({"model": ["whisper-1"], "prompt": ["x" * 501]}, "prompt", "at most 500"),
    ],
)  # fmt: skip
def test_a_form_that_cannot_be_honoured_is_refused(
    fields: dict[str, list[str]], param: str, said: str
) -> None:
    with pytest.raises(openai_files.OpenAIError) as refused:
        openai_files.parse(fields, POOLS)
    assert refused.value.status == 400 and refused.value.param == param and said in refused.value.message


def test_the_sdk_raises_our_error_as_openais() -> None:
    error = openai_files.OpenAIError("you must provide a model parameter", param="model", code="missing")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(error.status, json=openai_files.error_body(error))

    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(handler).audio.transcriptions.create(file=("a.wav", b"RIFF"), model="whisper-1")
    assert raised.value.code == "missing" and raised.value.param == "model"
    assert raised.value.type == "invalid_request_error" and "must provide a model" in raised.value.message


# --- OpenAI: the responses ---------------------------------------------------------------------


def answered(finals: Sequence[Final], **options: Any) -> Any:
    """What the openai SDK makes of our answer to its ``transcriptions.create(**options)``."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        parsed = openai_files.parse(form_of(request), POOLS)
        if parsed.stream:
            body = b"".join(openai_files.delta(f) for f in finals) + openai_files.done(info(1), finals)
            return httpx2.Response(
                200, content=body, headers={"content-type": openai_files.STREAM_CONTENT_TYPE}
            )
        kind, body = openai_files.render(parsed, info(1), finals)
        return httpx2.Response(200, content=body, headers={"content-type": kind})

    return openai_client(handler).audio.transcriptions.create(file=("a.wav", b"RIFF"), **options)


def rendered(fields: Mapping[str, Sequence[str]], finals: Sequence[Final] = FINALS) -> bytes:
    return openai_files.render(
        openai_files.parse({"model": ["whisper-1"], **fields}, POOLS), info(1), finals
    )[1]


def test_json_is_openais_transcription() -> None:
    answer = answered(FINALS, model="gpt-4o-transcribe")
    assert isinstance(answer, Transcription) and answer.text == "Namaste, duniya. aap kaise ho? theek hai"
    strict = Transcription.model_validate_json(rendered({}), strict=True)
    assert strict.usage is not None and strict.usage.type == "duration" and strict.usage.seconds == 6


def test_verbose_json_is_openais_with_segments_by_default_and_words_when_asked() -> None:
    answer = answered(FINALS, model="whisper-1", response_format="verbose_json")
    assert isinstance(answer, TranscriptionVerbose) and answer.language == "hindi" and answer.duration == 5.2
    assert answer.words is None and answer.segments is not None
    assert [(s.id, s.start, s.text) for s in answer.segments] == [
        (0, 0.25, " Namaste, duniya."),
        (1, 2.5, " aap kaise ho?"),
        (2, 4.0, " theek hai"),
    ]
    first, _, last = answer.segments
    assert (
        first.seek == 25 and first.avg_logprob == pytest.approx(-0.1054, abs=1e-4) and last.avg_logprob == 0.0
    )
    assert first.compression_ratio > 0 and first.no_speech_prob == 0.0 and first.tokens == []
    words = rendered({"response_format": ["verbose_json"], "timestamp_granularities[]": ["word"]})
    strict = TranscriptionVerbose.model_validate_json(words, strict=True)
    assert strict.segments is None and strict.words is not None
    assert [(w.word, w.start) for w in strict.words[:3]] == [
        ("Namaste,", 0.25),
        ("duniya.", 0.8),
        ("aap", 2.5),
    ]
    both = rendered({"response_format": ["verbose_json"], "timestamp_granularities[]": ["word", "segment"]})
    strict = TranscriptionVerbose.model_validate_json(both, strict=True)
    assert (
        strict.segments is not None
        and strict.words is not None
        and strict.model_extra == {"task": "transcribe"}
    )
    assert json.loads(both)["usage"] == {"type": "duration", "seconds": 6}


def test_the_language_is_named_as_whisper_names_it() -> None:
    request = openai_files.parse({"model": ["whisper-1"], "response_format": ["verbose_json"]}, POOLS)
    for code, name in (("en", "english"), (None, "hindi"), ("hi", "hindi")):
        body = openai_files.render(request, info(1, language=code), FINALS)[1]
        assert json.loads(body)["language"] == name


@pytest.mark.parametrize("kind", ["text", "srt", "vtt"])
def test_text_srt_and_vtt_come_as_the_sdk_returns_them(kind: str) -> None:
    answer = answered(FINALS, model="whisper-1", response_format=kind)
    assert isinstance(answer, str) and answer == rendered({"response_format": [kind]}).decode()
    if kind == "text":
        assert answer == "Namaste, duniya. aap kaise ho? theek hai\n"
    else:
        assert answer.count("-->") == 3 and ("channel 1: aap" in answer or "<v channel 1>aap" in answer)


def test_the_content_types() -> None:
    request = openai_files.parse({"model": ["whisper-1"], "response_format": ["vtt"]}, POOLS)
    assert openai_files.render(request, info(1), FINALS)[0] == "text/vtt; charset=utf-8"


# --- OpenAI: the stream ------------------------------------------------------------------------


def decoded(body: bytes) -> list[dict[str, Any]]:
    """The events of a stream, as the openai SDK's own SSE decoder reads them."""
    return [sse.json() for sse in SSEDecoder().iter_bytes(iter([body]))]


def test_the_sdk_iterates_our_stream_with_the_times_and_words_of_each_delta() -> None:
    events = list(answered(FINALS, model="gpt-4o-transcribe", stream=True, timestamp_granularities=["word"]))
    deltas, [done] = events[:-1], events[-1:]
    assert all(isinstance(event, TranscriptionTextDeltaEvent) for event in deltas)
    assert [event.delta for event in deltas] == ["aap kaise ho? ", "Namaste, duniya. ", "theek hai "]
    assert [(event.start, event.end) for event in deltas] == [(2.5, 3.75), (0.25, 1.5), (4.0, 4.5)]
    assert deltas[1].words[0] == {"word": "Namaste,", "start": 0.25, "end": 0.8}
    assert (
        isinstance(done, TranscriptionTextDoneEvent)
        and done.text == "Namaste, duniya. aap kaise ho? theek hai"
    )
    assert done.duration == 5.2 and done.usage is None  # type: ignore[attr-defined]


def test_the_stream_events_are_the_sdks_types_strictly() -> None:
    body = b"".join(openai_files.delta(f) for f in FINALS) + openai_files.done(info(1), FINALS)
    *deltas, done = decoded(body)
    for delta in deltas:
        event = TranscriptionTextDeltaEvent.model_validate(delta, strict=True)
        assert event.model_extra is not None and set(event.model_extra) <= {"start", "end", "words"}
    TranscriptionTextDoneEvent.model_validate(done, strict=True)
    assert openai_files.delta(FINALS[2]) == b""  # no text, no event


def test_an_error_in_the_stream_is_raised_by_the_sdk() -> None:
    error = openai_files.OpenAIError("the transcriber failed on segment 2", status=500, type="server_error")

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = openai_files.delta(FINALS[1]) + openai_files.error_event(error)
        return httpx2.Response(200, content=body, headers={"content-type": openai_files.STREAM_CONTENT_TYPE})

    stream = openai_client(handler).audio.transcriptions.create(
        file=("a.wav", b"RIFF"), model="whisper-1", stream=True
    )
    with pytest.raises(openai.APIError, match="transcriber failed on segment 2"):
        list(stream)


# --- the client: clients/transcribe.py against a fake server -----------------------------------


@dataclass
class Fake:
    """A fake OpenAI transcription server: what it saw, and how it answers."""

    forms: list[dict[str, list[str]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    refusal: openai_files.OpenAIError | None = None
    fail_mid_stream: bool = False
    uri: str = ""


PEHLA = (word(" pehla", 0.25, 0.5), word(" vaakya", 0.5, 0.75))
FAKE_FINALS = [
    Final("pehla vaakya", 0, 0.25, 0.75, 0.1, words=PEHLA, confidence=0.9),
    Final("doosra", 1, 1.0, 1.5, 0.1, words=(word(" doosra", 1.0, 1.5),), confidence=0.8),
]


@pytest.fixture
def fake() -> Iterator[Fake]:
    state = Fake()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = httpx2.Request(
                "POST", "http://x", headers={"content-type": self.headers["Content-Type"]}, content=body
            )
            state.forms.append(form_of(request))
            state.headers.append(dict(self.headers))
            try:
                if self.path != "/v1/audio/transcriptions":
                    raise openai_files.OpenAIError(f"no route {self.path}", status=404)
                if state.refusal is not None:
                    raise state.refusal
                parsed = openai_files.parse(state.forms[-1], POOLS)
            except openai_files.OpenAIError as error:
                self.answer(
                    error.status, "application/json", json.dumps(openai_files.error_body(error)).encode()
                )
                return
            finals = [
                Final(f.text, f.segment, f.start, f.end, f.latency) if not parsed.words else f
                for f in FAKE_FINALS
            ]
            events = [openai_files.delta(f) for f in finals]
            if state.fail_mid_stream:
                events.append(openai_files.error_event(openai_files.OpenAIError("segment 1 failed", 500)))
            else:
                events.append(openai_files.done(FileInfo(REQUEST_ID, "", 2.0, 1, "", "swift"), finals))
            self.answer(200, openai_files.STREAM_CONTENT_TYPE, b"".join(events))

        def answer(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.uri = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    soundfile.write(path, np.zeros(32000, dtype=np.int16), 16000, subtype="PCM_16")
    return path


def run(*args: str | Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "STT_API_KEY"}
    env |= {"PYTHONUTF8": "1"} | ({"STT_API_KEY": key} if key else {})
    command = [sys.executable, str(CLIENT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_the_client_streams_a_file_and_prints_its_text(fake: Fake, wav: Path) -> None:
    done = run(wav, "--uri", fake.uri, "--language", "hi", "--prompt", "Oriserve", key="SECRET")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pehla vaakya doosra\n"
    [form] = fake.forms
    assert form == {
        "model": ["whisper-1"],
        "response_format": ["json"],
        "stream": ["true"],
        "language": ["hi"],
        "prompt": ["Oriserve"],
    }
    assert fake.headers[0]["Authorization"] == "Bearer SECRET"


def test_the_client_writes_subtitles_and_json_with_words_into_a_folder(
    fake: Fake, wav: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.mp3"
    other.write_bytes(b"not really an mp3")  # no duration read locally: the bar has no end
    out = tmp_path / "out"
    done = run(wav, other, "--uri", fake.uri, "--output", "srt", "--out-dir", out, "--model", "swift")
    assert done.returncode == 0, done.stderr
    assert (
        (out / "speech.srt").read_text()
        == "1\n00:00:00,250 --> 00:00:00,750\npehla vaakya\n\n2\n00:00:01,000 --> 00:00:01,500\ndoosra\n"
    )
    assert (out / "other.srt").is_file() and fake.forms[0]["model"] == ["swift"]
    done = run(wav, "--uri", fake.uri, "--output", "json", "--words", "--out-dir", out)
    assert done.returncode == 0, done.stderr
    assert fake.forms[-1]["timestamp_granularities[]"] == ["word"]
    transcript = json.loads((out / "speech.json").read_text())
    assert transcript["text"] == "pehla vaakya doosra" and transcript["duration"] == 2.0
    assert transcript["segments"][0]["words"] == [
        {"word": "pehla", "start": 0.25, "end": 0.5},
        {"word": "vaakya", "start": 0.5, "end": 0.75},
    ]


def test_several_files_on_stdout_are_told_apart(fake: Fake, wav: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.wav"
    second.write_bytes(wav.read_bytes())
    done = run(wav, second, "--uri", fake.uri, "--output", "vtt")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("WEBVTT") == 2 and f"==> {second} <==" in done.stdout
    done = run(wav, second, "--uri", fake.uri, "--output", "json")
    assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == [str(wav), str(second)]


def test_a_missing_file_is_refused_before_any_request(fake: Fake, wav: Path, tmp_path: Path) -> None:
    done = run(wav, tmp_path / "nothing.wav", "--uri", fake.uri)
    assert done.returncode == 2 and "nothing.wav: no such file" in done.stderr
    assert fake.forms == []


def test_the_servers_refusal_is_told_and_fails(fake: Fake, wav: Path) -> None:
    fake.refusal = openai_files.OpenAIError("Incorrect API key provided", status=401, code="invalid_api_key")
    done = run(wav, "--uri", fake.uri)
    assert (
        done.returncode == 1 and "HTTP 401: Incorrect API key provided" in done.stderr and done.stdout == ""
    )


def test_an_error_in_the_stream_is_told_and_fails(fake: Fake, wav: Path) -> None:
    fake.fail_mid_stream = True
    done = run(wav, "--uri", fake.uri)
    assert done.returncode == 1 and "server error: segment 1 failed" in done.stderr


def test_no_server_is_a_clear_failure(wav: Path) -> None:
    done = run(wav, "--uri", "http://127.0.0.1:9")
    assert done.returncode == 1 and "cannot connect to http://127.0.0.1:9" in done.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--words",), "only --output json carries words"),
        (("--uri", "ws://localhost:8000"), "not an http:// or https:// URI"),
        (("--output", "docx"), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(wav: Path, args: tuple[str, ...], said: str) -> None:
    done = run(wav, *args)
    assert done.returncode == 2 and said in done.stderr
